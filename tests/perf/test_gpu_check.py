"""perf/gpu_check.sh, the accelerator check, in its CPU dry run (``GPU_CHECK_DEVICE=cpu``):
every step ends ``ok`` and writes its JSON. The script runs only when a GPU is lent, with
minutes counted; a step that broke here since (a configuration that changed under it: the
first stage of ``u1_2d.yaml`` once ate the dry run's whole training budget) would waste that
time, so the same logic runs in the suite."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import clean_env

ROOT = Path(__file__).resolve().parents[2]
STEPS = ["setup", "pytest", "flow", "conv", "sampling", "train"]
JSON = ["bench_flow.json", "bench_conv.json", "bench_sampling.json", "quality/quality.json",
        "summary.json"]


def test_dry_run_on_the_cpu_passes_every_step(tmp_path):
    env = clean_env() | {"GPU_CHECK_DEVICE": "cpu", "GPU_CHECK_PYTHON": sys.executable,
                         "GPU_CHECK_INSTALL": "0", "OUT": str(tmp_path),
                         # the logic is tested, not the speed: room for a slow, busy machine
                         "GPU_CHECK_BUDGET": "1500",
                         "GPU_CHECK_LIMITS": "pytest=300 flow=240 conv=240 sampling=240 train=240",
                         "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
                                 f"{os.environ.get('PATH', '')}"}
    p = subprocess.run(["bash", str(ROOT / "perf" / "gpu_check.sh")], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device"] == "cpu"
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [(s, "ok") for s in STEPS]
    for name in JSON:
        assert (tmp_path / name).is_file(), name
    quality = json.loads((tmp_path / "quality" / "quality.json").read_text())["result"]
    assert quality["steps"] > 0 and 0.0 <= quality["ess"] <= 1.0
