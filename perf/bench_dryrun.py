"""`hpcflow train --dry-run`'s memory estimate against the measured peak of real training.

For each configuration (small batches, so that each runs in a minute or two on 2 CPU cores):

1. ``hpcflow train CONFIG --dry-run --json`` in a fresh process: its estimate of the peak
   memory per rank (CPU: resident set size; GPU: bytes allocated by torch);
2. ``hpcflow train CONFIG`` for a few steps in another fresh process, whose peak resident set
   size (``VmHWM``) is the measured peak.

Prints a table and writes ``perf/out/bench_dryrun.json``. One rank (no MPI launcher), evaluation
off in both (``train.eval_every=0``), as the dry run's evaluation figure is a separate line.

    .venv/bin/python perf/bench_dryrun.py [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "perf" / "out" / "bench_dryrun.json"
CASES = {
    "u1_4d": ("configs/u1_4d.yaml", ["train.batch_size=16", "train.micro_batch_size=16"]),
    "su3_4d": ("configs/su3_4d.yaml", ["train.batch_size=8", "train.micro_batch_size=8"]),
}
COMMON = ["train.eval_every=0", "train.plot=false", "distributed.device=cpu"]
TRAIN_CHILD = """\
import sys
from hpcflow import cli
rc = cli.main(sys.argv[1:])
with open("/proc/self/status") as f:
    peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
print("PEAK", peak)
sys.exit(rc)
"""


def sets(overrides: list[str]) -> list[str]:
    return [a for kv in overrides for a in ("--set", kv)]


def dry_run(config: str, overrides: list[str]) -> dict:
    cmd = [sys.executable, "-m", "hpcflow", "train", config, "--dry-run", "--json",
           *sets(overrides)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(p.stdout.strip().splitlines()[-1])


def measured_peak(config: str, overrides: list[str], steps: int) -> int:
    with tempfile.TemporaryDirectory() as run_dir:
        cmd = [sys.executable, "-c", TRAIN_CHILD, "train", config, "-o", run_dir,
               *sets([*overrides, f"train.steps={steps}", "train.checkpoint_every=1000"])]
        p = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    return int(p.stdout.split("PEAK")[-1].split()[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="training steps measured (default 3)")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = ap.parse_args(argv)
    rows = []
    print(f"{'case':8} {'micro':>5} {'GB/sample':>9} {'base GB':>8} {'estimate GB':>11} "
          f"{'measured GB':>11} {'error':>7} {'s/step':>7}")
    for name in args.cases:
        config, extra = CASES[name]
        overrides = [*extra, *COMMON]
        r = dry_run(config, overrides)
        peak = measured_peak(config, overrides, args.steps)
        error = r["per_rank_bytes"] / peak - 1
        rows.append({"case": name, "config": config, "overrides": overrides, "dry_run": r,
                     "measured_peak_bytes": peak, "relative_error": error})
        print(f"{name:8} {r['micro_batch']:>5} {r['per_sample_bytes'] / 1e9:>9.3f} "
              f"{r['base_bytes'] / 1e9:>8.3f} {r['per_rank_bytes'] / 1e9:>11.3f} "
              f"{peak / 1e9:>11.3f} {error:>+7.1%} {r['step_s']:>7.2f}", flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"steps": args.steps, "rows": rows}, indent=1))
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
