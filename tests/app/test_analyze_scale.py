"""``hpcflow analyze`` in bounded memory: a samples file of 300 MB (two shards joined by
``samples.h5``) is analyzed by a process whose address space is limited to that of a run on a
tiny file plus less than a quarter of the big file's size, and gives what ``analyze_file`` gives
in this process.

The limit is ``RLIMIT_AS`` (the address space); it works with torch imported. A fresh
``python -m hpcflow analyze`` on one thread maps 0.69 GB once imported and peaks at about
0.73 GB (0.3 GB resident) on the tiny file, within a few MB from run to run; that peak is
measured in the environment of the test (threads, libraries), so the limit follows the
machine. The big file then needs about 10 MB more. The peak resident memory of the big run is
checked too (``wait4``). An analysis that kept memory per row of links fails here: one that
kept the small result arrays of every batch grew by 200 MB (heap fragmentation).

The files (300 MB) are removed at the end, not left to pytest's last three ``tmp_path``."""

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from hpcflow.app.analyze import analyze_file
from hpcflow.estimators import independence_metropolis
from hpcflow.io.samples import SampleHeader, ShardWriter, write_master
from hpcflow.lattice.groups import get_group
from tests.helpers import clean_env

MIB = 1 << 20
SHAPE = (4, 4, 4, 4)
ROW_BYTES = len(SHAPE) * math.prod(SHAPE) * 3 * 3 * 16  # SU(3), complex128: 147456
BIG_ROWS = 1024  # per shard; two shards: 302 MB of links
TINY_ROWS = 32  # per shard; more than one batch of analyze_file (4 MiB, 28 rows)
MARGIN = 64 * MIB  # extra memory allowed for the big file: < 1/4 of its links
# resident: the first run in a fresh clone measured 69 MiB over its tiny-file baseline (page
# cache and lazily loaded modules); still < 1/2 of the big file's links
RSS_MARGIN = 2 * MARGIN

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/status; RLIMIT_AS as on Linux")

# ``python -m hpcflow`` that reports its peak address space and resident memory at exit.
PROBE = """import atexit, runpy, sys
def report():
    status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
    sys.stderr.write(f"PROBE {status['VmPeak'].split()[0]} {status['VmHWM'].split()[0]}\\n")
atexit.register(report)
sys.argv = ["hpcflow", *sys.argv[1:]]
runpy.run_module("hpcflow", run_name="__main__", alter_sys=True)
"""


@pytest.fixture
def scratch(tmp_path):
    """``tmp_path``, emptied after the test (300 MB of samples must not stay behind)."""
    need = 3 * 2 * BIG_ROWS * ROW_BYTES  # the 0.3 GB file, with room to spare
    if shutil.disk_usage(tmp_path).free < need:  # a failure, not a skip: the point must be shown
        pytest.fail(f"the analyze-at-scale test needs {need / 1e9:.1f} GB of free disk in "
                    f"{tmp_path}")
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def write_samples(directory, rows_per_shard, shards=2, seed=0):
    """SU(3) 4^4 flow-like samples: ``shards`` shards of ``rows_per_shard`` rows and
    ``samples.h5``. Every link is drawn from a pool of 64 Haar-random configurations (cheap,
    and every row differs); normal log weights, their independence-Metropolis chain."""
    header = SampleHeader("SU3", SHAPE, 6.0, sampler="flow")
    group = get_group("SU3")
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    pool = group.random((64, len(SHAPE), *SHAPE), generator=gen).reshape(64, -1, 3, 3)
    links_per_row = pool.shape[1]
    for rank in range(shards):
        lw = rng.normal(size=rows_per_shard)
        state, accepted, _, _ = independence_metropolis(lw, rng.random(rows_per_shard))
        with ShardWriter(directory, header, rank=rank, world_size=shards, fsync=False) as w:
            for a in range(0, rows_per_shard, 64):
                b = min(a + 64, rows_per_shard)
                pick = torch.randint(0, 64, (b - a, links_per_row), generator=gen)
                links = pool[pick, torch.arange(links_per_row)]
                w.append({"links": links.reshape(b - a, len(SHAPE), *SHAPE, 3, 3),
                          "log_q": np.zeros(b - a), "action": -lw[a:b], "log_weight": lw[a:b],
                          "mcmc_state": state[a:b], "accepted": accepted[a:b]})
    return write_master(directory, shards)


def start(cmd, tmp_path, limit=None):
    """Start ``cmd`` with its address space limited to ``limit`` bytes, output to files."""

    def set_limit():
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with open(out, "w") as fo, open(err, "w") as fe:
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=one_thread_env(),
                                preexec_fn=set_limit)
    return proc, out, err


def finish(started, timeout=120):
    """Wait for a :func:`start`-ed command: ``(returncode, stdout, stderr, peak resident
    bytes)``; returncode ``None`` when it ran past ``timeout`` s and was killed."""
    proc, out, err = started
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            rc = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            proc.kill()
            _, _, usage = os.wait4(proc.pid, 0)
            rc = None
            break
        time.sleep(0.05)
    proc.returncode = -9 if rc is None else rc  # reaped here: Popen must not wait for it
    return rc, out.read_text(), err.read_text(), usage.ru_maxrss * 1024


def one_thread_env():
    """The environment of the runs: one thread, as in this process during the comparison (a
    second thread changes the order of sums, and on a loaded machine an OpenMP team larger
    than the free cores is many times slower)."""
    return {**clean_env(), "OMP_NUM_THREADS": "1"}


def analyze_in_process(path):
    """``analyze_file(path)`` on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return analyze_file(path)
    finally:
        torch.set_num_threads(threads)


def analyze_cmd(path):
    return [sys.executable, "-m", "hpcflow", "analyze", str(path), "--json"]


def test_analyze_of_a_big_file_in_bounded_memory(scratch):
    tmp_path = scratch
    tiny = write_samples(tmp_path / "tiny", TINY_ROWS)
    big = write_samples(tmp_path / "big", BIG_ROWS, seed=1)
    assert 2 * BIG_ROWS * ROW_BYTES >= 4 * MARGIN

    cmd = [sys.executable, "-c", PROBE, *analyze_cmd(tiny)[3:]]
    rc, _, err, _ = finish(start(cmd, tmp_path))
    assert rc == 0, err
    peak_kib, hwm_kib = (int(v) for v in err.split("PROBE ")[1].split()[:2])
    baseline, baseline_rss = peak_kib * 1024, hwm_kib * 1024

    limited = start(analyze_cmd(big), tmp_path, limit=baseline + MARGIN)
    expected = analyze_in_process(big)  # meanwhile, on the other core
    rc, out, err, rss = finish(limited)
    assert rc == 0, f"rc {rc} (None: timed out), limit {(baseline + MARGIN) / MIB:.0f} MiB: " \
                    f"{err[-2000:]}"
    assert rss < baseline_rss + RSS_MARGIN, (rss / MIB, baseline_rss / MIB)
    result = json.loads(out)
    assert result["n"] == 2 * BIG_ROWS and result["replicas"] == 2
    result.pop("notes")
    assert json.dumps(result, sort_keys=True) == json.dumps(expected, sort_keys=True)

    # the limit is enforced: well below the baseline the same command fails (torch's libraries
    # do not map), or hangs, as a failed import under such a limit sometimes does
    rc, _, _, _ = finish(start(analyze_cmd(big), tmp_path, limit=baseline - 256 * MIB),
                         timeout=30)
    assert rc != 0, "the limit does not bite"
