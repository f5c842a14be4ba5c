"""perf/bench_snf.py and perf/bench_first_order.py run end to end on tiny lattices and write
what RESULTS.md reads (the figures come from long runs; these keep the scripts from rotting)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "lattice.shape=[4,4,4]", "--set", "train.batch_size=4"]


def _run(script: str, *args: str) -> str:
    p = subprocess.run([sys.executable, str(ROOT / "perf" / script), "--threads", "1", *args],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def test_snf_against_annealing_rows_and_ratio(tmp_path):
    """The flow, annealing at the flow's and at another protocol length, the chain; the
    ratios are taken against the best annealing row."""
    _run("bench_snf.py", "--config", "configs/snf_u1_3d.yaml", "--minutes", "0.02", "--eval",
         "16", "--batch", "8", "--reference", "20", "--annealing-steps", "8",
         "--annealing-eval", "8", "--out-dir", str(tmp_path), *TINY,
         "--set", "sampler.steps=4", "--set", "sampler.knots=2")
    data = json.loads((tmp_path / "snf-snf_u1_3d.json").read_text())
    rows = data["rows"]
    assert [(r["sampler"], r["steps"]) for r in rows[:3]] == [
        ("snf", 4), ("annealing", 4), ("annealing", 8)]
    assert rows[3]["sampler"] == "heat-bath chain" and rows[3]["ess"] <= 1.0
    best = max(rows[1:3], key=lambda r: r["eff_per_s"])
    assert data["annealing_steps_compared"] == best["steps"]
    assert abs(data["ratio_sampling_only"] - rows[0]["eff_per_s_sampling"]
               / best["eff_per_s"]) < 1e-9


def test_first_order_scan(tmp_path):
    """Factor 0 is annealing, factor 1 the first-order layers: at beta 0 -> 1 in 4 steps on
    U(1) 4^3 the work variance drops (measured 8.6 -> 2.9 here)."""
    out = tmp_path / "first.json"
    _run("bench_first_order.py", "--config", "configs/snf_u1_3d.yaml", "--steps", "4",
         "--factors", "0", "1", "--n", "32", "--batch", "16", "--out", str(out), *TINY,
         "--set", "sampler.knots=2")
    rows = json.loads(out.read_text())["rows"]
    assert [(r["steps"], r["factor"]) for r in rows] == [(4, 0.0), (4, 1.0)]
    assert rows[1]["var_work"] < 0.6 * rows[0]["var_work"]
