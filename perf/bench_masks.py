"""Benchmark the mask builder: every layer's link mask, loop counts, active-loop assignment and
frozen-loop features of a 16-layer schedule with the default patterns.

Cases: 4D 16^4 (the issue's target: well under a second), 3D 16^3, 2D 64x64; features of every
loop shape the lattice has, plaquettes as active loops, multi_update 1 and 2. A layer repeated
within the 16 (2D and 3D cycles are 8 and 12 layers long) is built once and shared; the loops
are walked for one offset per pattern and translated to the others ("fresh": every layer
walked, for reference).

    python perf/bench_masks.py [--repeats 5] [--threads 1] [--out perf/out/bench_masks.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, time_it, write_json  # noqa: E402

CASES = [
    {"shape": [16, 16, 16, 16], "layers": 16, "multi_update": 1},
    {"shape": [16, 16, 16, 16], "layers": 16, "multi_update": 2},
    {"shape": [16, 16, 16], "layers": 16, "multi_update": 1},
    {"shape": [64, 64], "layers": 16, "multi_update": 1},
    # Reference: every layer walked afresh, without the translation between offsets.
    {"shape": [16, 16, 16, 16], "layers": 16, "multi_update": 1, "fresh": True},
]


def run_case(case: dict, repeats: int) -> dict:
    from hpcflow.masks import build_layer, build_schedule

    kwargs = {"layers": case["layers"], "multi_update": case["multi_update"]}
    shape = case["shape"]
    sched = build_schedule(shape, **kwargs)
    layer = sched.layers[0]
    if case.get("fresh"):
        def fn():
            return [build_layer(shape, la.pattern, la.offset, feature_shapes=sched.feature_shapes,
                                multi_update=case["multi_update"]) for la in sched.layers]
    else:
        def fn():
            return build_schedule(shape, **kwargs)
    t = time_it(fn, torch.device("cpu"), repeats=repeats, warmup=1)
    fresh = " fresh" if case.get("fresh") else ""
    return {
        **case,
        "case": f"{len(shape)}D {'x'.join(map(str, shape))} K={case['multi_update']}{fresh}",
        "distinct_layers": len({(la.pattern_index, la.offset) for la in sched.layers}),
        "walked_layers": len(sched.layers) if case.get("fresh") else len(sched.patterns),
        "features_per_layer": len(layer.features),
        "active_loops_per_layer": sum(len(u) for u in layer.updates),
        "active_fraction": layer.active_fraction,
        **t,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: stable timings on a shared machine)")
    p.add_argument("--out", default="perf/out/bench_masks.json")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows = [run_case(case, args.repeats) for case in CASES]
    print_table(rows, [("case", "case", ""), ("layers", "layers", ""),
                       ("distinct_layers", "distinct", ""), ("walked_layers", "walked", ""),
                       ("features_per_layer", "features", ""),
                       ("active_loops_per_layer", "active loops", ""),
                       ("median_ms", "median ms", ".1f"), ("min_ms", "min ms", ".1f"),
                       ("max_ms", "max ms", ".1f")])
    path = write_json(args.out, {"benchmark": "masks", "machine": machine(), "results": rows})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
