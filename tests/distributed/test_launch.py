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


# What each system's script must carry: queue rule, binding, environment, walltime and signal
# wiring (launch/README.md says where each comes from). Walltime 01:00:00 with the default
# margin of 5% = 180 s: training gets 3600 - 180 = 3420 s, counted from the job's start.
COMMON = ['HPCFLOW_JOB_START="$(date +%s)"', "export HPCFLOW_JOB_START",
          "--set train.walltime=3420", "set -u  # only now", "HPCFLOW_LAUNCHER",
          "ip -4 -o addr show dev hsn0", 'export MASTER_ADDR="$hsn_addr"']
REQUIRED = {
    "aurora": (["--nodes", "3"], [
        "#PBS -q debug-scaling", "#PBS -l select=3", "#PBS -l walltime=01:00:00",
        "#PBS -l filesystems=home:flare", "#PBS -l place=scatter", "#PBS -k doe",
        "RANKS_PER_NODE=12",
        "CPU_BIND=list:1-8:9-16:17-24:25-32:33-40:41-48:53-60:61-68:69-76:77-84:85-92:93-100",
        "export ZE_FLAT_DEVICE_HIERARCHY=FLAT", "export CCL_PROCESS_LAUNCHER=pmix",
        "export CCL_ATL_TRANSPORT=mpi", "export CCL_KVS_MODE=mpi",
        "export CCL_KVS_CONNECTION_TIMEOUT=600", "export CCL_OP_SYNC=1",
        "export FI_MR_CACHE_MONITOR=userfaultfd", "export FI_CXI_RX_MATCH_MODE=hybrid",
        'launcher=(mpiexec -n 36 -ppn "$RANKS_PER_NODE" --cpu-bind="$CPU_BIND")',
        "training stops by itself 180 s before the limit",
        "module load frameworks\nfi\nset -u"], "torch", "xpu"),
    "polaris": (["--nodes", "2"], [
        "#PBS -q debug", "#PBS -l select=2:system=polaris", "#PBS -l filesystems=home:eagle",
        "#PBS -l walltime=01:00:00", "export HPCFLOW_GPU_AFFINITY=reverse",
        "RANKS_PER_NODE=4", 'export NCCL_NET="AWS Libfabric"', "/soft/libraries/aws-ofi-nccl/",
        "export NCCL_NET_GDR_LEVEL=PHB", "export NCCL_CROSS_NIC=1",
        "export FI_CXI_DISABLE_HOST_REGISTER=1", "export FI_MR_CACHE_MONITOR=userfaultfd",
        "export CUBLAS_WORKSPACE_CONFIG=:4096:8",
        'launcher=(mpiexec -n 8 -ppn "$RANKS_PER_NODE" --cpu-bind depth -d 16)',
        "training stops by itself 180 s before the limit",
        "module load conda\nconda activate base\nfi\nset -u"], "torch", "cuda"),
    "perlmutter": (["--nodes", "4"], [
        "#SBATCH -q regular", "#SBATCH -C gpu", "#SBATCH -N 4", "#SBATCH -t 01:00:00",
        "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
        "#SBATCH --cpus-per-task=32", "#SBATCH --signal=USR1@180",
        "export SLURM_CPU_BIND=cores", "export NCCL_SOCKET_IFNAME=hsn",
        "launcher=(srun -N 4 -n 16 --ntasks-per-node=4 --gpus-per-node=4 "
        "--cpus-per-task=32)", "module load pytorch\nfi\nset -u"], "torch", "cuda"),
    "frontier": (["--nodes", "16", "--venv", "/opt/venv"], [
        "#SBATCH -p batch", "#SBATCH -N 16", "#SBATCH -t 01:00:00",
        "#SBATCH --signal=USR1@180", "export OMP_NUM_THREADS=7",
        "launcher=(srun -N 16 -n 128 --ntasks-per-node=8 -c7 --gpus-per-task=1 "
        "--gpu-bind=closest)", "AWS_OFI_RCCL_DIR", "export NCCL_SOCKET_IFNAME=hsn0",
        "export FI_CXI_ATS=0", "source /opt/venv/bin/activate\nfi\nset -u"], "torch", "cuda"),
}


@pytest.mark.parametrize("system", sorted(REQUIRED))
def test_required_lines(tmp_path, system):
    """Every system's dry run carries its table of lines, and the hpcflow command."""
    extra, lines, backend, device = REQUIRED[system]
    out = dry_run(tmp_path, "--system", system, "--walltime", "01:00:00", "--project", "P",
                  *extra)
    for line in COMMON + lines:
        assert line in out, line
    hpcflow_line(out, backend, device, tmp_path)
    assert "{{" not in out.split("in {{...}}")[-1]  # every placeholder filled
    assert not any(line.startswith("torchrun") for line in out.splitlines())
    assert out.index("set -eo pipefail") < out.index("set -u  # only now")
    if system in ("aurora", "polaris"):
        assert "--signal" not in out  # PBS has no warning signal: the walltime does it


@pytest.mark.parametrize("system, nodes, walltime, queue", [
    ("polaris", 1, "01:00:00", "debug"),       # the 1-node default: prod takes 10 and more
    ("polaris", 5, "00:30:00", "debug-scaling"),
    ("polaris", 10, "06:00:00", "prod"),
    ("aurora", 2, "00:30:00", "debug"),
    ("aurora", 16, "01:00:00", "debug-scaling"),
    ("aurora", 64, "06:00:00", "prod"),
    ("perlmutter", 2, "00:30:00", "debug"),
    ("perlmutter", 2, "02:00:00", "regular"),
    ("frontier", 16, "02:00:00", "batch"),
    ("frontier", 16, "12:00:00", "extended"),
    ("frontier", 200, "12:00:00", "batch"),
])
def test_default_queue_follows_the_rules(tmp_path, system, nodes, walltime, queue):
    out = dry_run(tmp_path, "--system", system, "--nodes", str(nodes), "--walltime", walltime,
                  "--project", "P", "--venv", "/opt/venv")
    assert (f"#PBS -q {queue}" if system in ("aurora", "polaris") else
            f"#SBATCH -{'p' if system == 'frontier' else 'q'} {queue}") in out


@pytest.mark.parametrize("args, message", [
    (["--system", "polaris", "--queue", "prod"], "queue prod does not take 1 node(s)"),
    (["--system", "polaris", "--nodes", "4", "--walltime", "06:00:00"], "no queue takes"),
    (["--system", "frontier", "--nodes", "100", "--walltime", "08:00:00", "--venv", "/v"],
     "no queue takes"),
    (["--system", "perlmutter", "--queue", "debug", "--walltime", "01:00:00"],
     "queue debug does not take"),
    (["--system", "frontier"], "--venv"),
    (["--system", "aurora", "--walltime", "00:10:00", "--margin", "600"], "--margin"),
])
def test_queue_rules_refuse(tmp_path, args, message):
    assert message in dry_run(tmp_path, *args, "--project", "P", ok=False)


def test_margin_sets_walltime_and_signal(tmp_path):
    out = dry_run(tmp_path, "--system", "perlmutter", "--project", "P", "--walltime",
                  "00:30:00", "--margin", "120")
    assert "#SBATCH --signal=USR1@120" in out and "--set train.walltime=1680" in out


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
    out = dry_run(tmp_path, "--system", system, "--project", "P", "--venv", "/opt/venv")
    script = out.split("(dry run: not written) ----\n", 1)[1].split("# ---- launch")[0]
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
                        "--config", CONFIG, "--run-dir", str(run_dir), "--repeat", "2",
                        "--venv", "/opt/venv"],
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
