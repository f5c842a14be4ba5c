"""perf/bench_annealing.py runs end to end on tiny lattices and writes what RESULTS.md reads.

The figures themselves come from long runs (perf/RESULTS.md); these runs only keep the script
from rotting: every study, every sampler row, ``--resume`` measuring nothing twice."""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "perf" / "bench_annealing.py"


def _run(*args: str) -> str:
    p = subprocess.run([sys.executable, str(SCRIPT), "--threads", "1", *args],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return p.stdout


def test_volume_scan_with_flow_layers_and_resume(tmp_path):
    out = tmp_path / "volume.json"
    args = ["volume", "--sizes", "4", "--trajectories", "8", "--start-steps", "2",
            "--max-steps", "4", "--flow-seconds", "0.1", "--flow-start-steps", "2",
            "--flow-batch", "2", "--flow-knots", "2", "--out", str(out)]
    _run(*args)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["L"], r["sampler"]) for r in rows] == [(4, "annealing"), (4, "snf")]
    for r in rows:
        assert [s["steps"] for s in r["scan"]] in ([2], [2, 4])
        assert all(0 < s["ess"] <= 1 and s["trajectories"] == 8 for s in r["scan"])
        assert r["s_per_eff_sample"] > 0
    snf = rows[1]
    assert snf["train_s"] > 0 and all(s["opt_steps"] >= 2 for s in snf["scan"])
    assert snf["s_for_1000_eff"] >= snf["train_s"]
    assert out.with_suffix(".png").exists()
    # --resume: both rows are there already, nothing is measured again
    _run(*args, "--resume")
    assert json.loads(out.read_text())["rows"] == rows


def test_topology_rows_for_every_sampler(tmp_path):
    out = tmp_path / "topology.json"
    _run("topology", "--size", "4", "--beta", "2", "--minutes", "0.005", "--probe", "4",
         "--trajectories", "8", "--steps", "2", "--flow-seconds", "0.1", "--flow-batch", "2",
         "--flow-knots", "2", "--beta-start", "1", "--from-steps", "2", "--out", str(out))
    data = json.loads(out.read_text())
    names = [r["sampler"] for r in data["rows"]]
    assert len(names) == 6 and names[0].startswith("heat bath") and names[1].startswith("HMC")
    assert "SNF" in names[3] and "heat-bath ensemble" in names[4]
    assert "SNF" in names[5] and "same ensemble" in names[5]
    for r in data["rows"]:
        assert r["steps"] > 0 and math.isfinite(r["chi"]) and r["chi"] >= 0
    assert data["rows"][4]["ensemble_s"] > 0 and data["rows"][3]["train_s"] > 0
    assert data["rows"][5]["ensemble_s"] == data["rows"][4]["ensemble_s"]
    assert data["rows"][5]["train_s"] > 0
    assert 0 < data["chi_exact"] < 1


def test_equilibrium_rows_and_reference(tmp_path):
    out = tmp_path / "equilibrium.json"
    _run("equilibrium", "--size", "2", "--steps", "1", "2", "--ensemble", "4",
         "--thermalization", "2", "--save-every", "1", "--reference", "4", "--snf",
         "--flow-seconds", "0.1", "--flow-batch", "2", "--flow-knots", "1", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [r["sampler"].split(",")[0] for r in rows] == ["5.6 -> 5.7", "snf"] * 2 + [
        "heat-bath chain at 5.7"]
    assert all(0 < r["plaquette"] < 1 and r["s_per_eff"] > 0 for r in rows)
    assert rows[1]["train_s"] > 0 and rows[0]["train_s"] == 0


def test_resume_refuses_another_studys_file(tmp_path):
    """--resume on a file that is not a volume output at the same beta: one message naming
    the file, non-zero exit, the file untouched."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"rows": []}')
    p = subprocess.run([sys.executable, str(SCRIPT), "volume", "--sizes", "4", "--resume",
                        "--out", str(bad)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert p.returncode != 0 and str(bad) in p.stderr and "Traceback" not in p.stderr
    assert bad.read_text() == '{"rows": []}'
