"""Dry runs of launch/submit.py (and launch/local.sh) for every system: the generated batch
scripts carry each site's facts (launch/README.md) and the hpcflow
command, and nothing is written or submitted."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUBMIT = ROOT / "launch" / "submit.py"
CONFIG = str(ROOT / "configs" / "demo.yaml")


def dry_run(tmp_path, *args: str, ok: bool = True) -> str:
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(SUBMIT), "--config", CONFIG, "--run-dir", str(run_dir),
           "--dry-run", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    if ok:
        assert p.returncode == 0, p.stderr
        assert not run_dir.exists(), "a dry run must not write anything"
    else:
        assert p.returncode != 0
        return p.stderr
    return p.stdout


def hpcflow_line(out: str, backend: str, device: str, tmp_path) -> None:
    assert (f"python -m mpi4py -m hpcflow train {CONFIG} -o {tmp_path / 'run'} "
            f"--set distributed.backend={backend} --set distributed.device={device}") in out


def test_aurora(tmp_path):
    out = dry_run(tmp_path, "--system", "aurora", "--nodes", "3", "--walltime", "02:00:00",
                  "--project", "LatticeFlow", "--queue", "debug-scaling")
    for line in ("#PBS -l select=3", "#PBS -l walltime=02:00:00", "#PBS -A LatticeFlow",
                 "#PBS -q debug-scaling", "#PBS -l filesystems=home:flare",
                 "#PBS -l place=scatter", "#PBS -k doe", "RANKS_PER_NODE=12",
                 "CPU_BIND=list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:"
                 "85-92:93-100",
                 "export ZE_FLAT_DEVICE_HIERARCHY=FLAT", "export CCL_PROCESS_LAUNCHER=pmix",
                 "export CCL_ATL_TRANSPORT=mpi", "export CCL_KVS_MODE=mpi",
                 "export FI_MR_CACHE_MONITOR=userfaultfd",
                 'mpiexec -n 36 -ppn "$RANKS_PER_NODE" --cpu-bind="$CPU_BIND"',
                 "qsub " + str(tmp_path / "run" / "job-aurora-train.pbs")):
        assert line in out, line
    hpcflow_line(out, "torch", "xpu", tmp_path)
    assert "{{" not in out.split("in {{...}}")[-1]  # every placeholder filled


def test_polaris(tmp_path):
    out = dry_run(tmp_path, "--system", "polaris", "--nodes", "2", "--project", "P")
    for line in ("#PBS -l select=2:system=polaris", "#PBS -l filesystems=home:eagle",
                 "#PBS -q prod", "export HPCFLOW_GPU_AFFINITY=reverse", "RANKS_PER_NODE=4",
                 'mpiexec -n 8 -ppn "$RANKS_PER_NODE" --cpu-bind depth -d 16'):
        assert line in out, line
    hpcflow_line(out, "torch", "cuda", tmp_path)


def test_perlmutter(tmp_path):
    out = dry_run(tmp_path, "--system", "perlmutter", "--nodes", "4", "--walltime", "00:20:00",
                  "--project", "m1234_g", "--queue", "debug")
    for line in ("#SBATCH -C gpu", "#SBATCH -N 4", "#SBATCH -t 00:20:00", "#SBATCH -A m1234_g",
                 "#SBATCH -q debug", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=32",
                 "srun -N 4 -n 16 --ntasks-per-node=4 --gpus-per-node=4 --cpus-per-task=32",
                 "sbatch --parsable " + str(tmp_path / "run" / "job-perlmutter-train.slurm")):
        assert line in out, line
    hpcflow_line(out, "torch", "cuda", tmp_path)
    assert not any(line.startswith("torchrun") for line in out.splitlines())


def test_frontier_chained_resubmission(tmp_path):
    out = dry_run(tmp_path, "--system", "frontier", "--nodes", "16", "--project", "LGT001",
                  "--repeat", "3", "--", "--set", "train.steps=50000")
    script = str(tmp_path / "run" / "job-frontier-train.slurm")
    for line in ("#SBATCH -N 16", "#SBATCH -p batch", "export OMP_NUM_THREADS=7",
                 "srun -N 16 -n 128 -c7 --gpus-per-task=1 --gpu-bind=closest",
                 "--set train.steps=50000",
                 f"sbatch --parsable {script}",
                 f"sbatch --parsable --dependency=afterany:<id of job 1> {script}",
                 f"sbatch --parsable --dependency=afterany:<id of job 2> {script}"):
        assert line in out, line
    hpcflow_line(out, "torch", "cuda", tmp_path)
    assert not any(line.startswith("torchrun") for line in out.splitlines())


def test_pbs_chain_and_sample_command(tmp_path):
    out = dry_run(tmp_path, "--system", "aurora", "--project", "P", "--command", "sample",
                  "--repeat", "2", "--venv", "/opt/venv")
    run = tmp_path / "run"
    assert f"python -m mpi4py -m hpcflow sample {run}" in out
    assert f"qsub -W depend=afterany:<id of job 1> {run / 'job-aurora-sample.pbs'}" in out
    assert "source /opt/venv/bin/activate" in out


def test_overrides_of_backend_and_device(tmp_path):
    out = dry_run(tmp_path, "--system", "polaris", "--project", "P", "--backend", "horovod")
    hpcflow_line(out, "horovod", "cuda", tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--system", "aurora"], "--project is required"),
    (["--system", "aurora", "--project", "P", "--walltime", "1h"], "HH:MM:SS"),
    (["--system", "aurora", "--project", "P", "--nodes", "0"], "positive"),
])
def test_bad_arguments(tmp_path, args, message):
    assert message in dry_run(tmp_path, *args, ok=False)


def test_local_dry_run(tmp_path):
    out = dry_run(tmp_path, "--system", "local", "--ranks", "3")
    assert "mpiexec -n 3 " in out
    assert f"-m mpi4py -m hpcflow train {CONFIG} -o {tmp_path / 'run'}" in out
    assert "OMP_NUM_THREADS=" in out


@pytest.mark.parametrize("system", ["aurora", "polaris", "perlmutter", "frontier"])
def test_generated_scripts_are_valid_bash(tmp_path, system):
    out = dry_run(tmp_path, "--system", system, "--project", "P")
    script = out.split("(dry run: not written) ----\n", 1)[1].split("# ---- launch line")[0]
    assert script.startswith("#!/bin/bash")
    p = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("system, tool", [("frontier", "sbatch"), ("polaris", "qsub")])
def test_submission_chains_job_ids(tmp_path, system, tool):
    """Without --dry-run: the script is written and each job depends on the one before."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    reply = "4242;frontier" if tool == "sbatch" else "4242.polaris-pbs-01"
    fake = bin_dir / tool
    fake.write_text(f'#!/bin/sh\necho "$PWD $*" >> {calls}\necho "{reply}"\n')
    fake.chmod(0o755)
    run_dir = tmp_path / "run"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    p = subprocess.run([sys.executable, str(SUBMIT), "--system", system, "--project", "P",
                        "--config", CONFIG, "--run-dir", str(run_dir), "--repeat", "2"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    ext = "slurm" if tool == "sbatch" else "pbs"
    script = run_dir / f"job-{system}-train.{ext}"
    assert script.is_file() and (run_dir / "logs").is_dir()
    first, second = calls.read_text().splitlines()
    assert first.startswith(f"{run_dir / 'logs'} ")  # PBS logs land where qsub runs
    job_id = reply.split(";")[0]
    dep = f"--dependency=afterany:{job_id}" if tool == "sbatch" else f"depend=afterany:{job_id}"
    assert dep in second and second.endswith(str(script))
