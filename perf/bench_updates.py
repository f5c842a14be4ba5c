"""Benchmark the local updates: heat-bath and over-relaxation sweeps per configuration.

Cases: U(1) 4^3 and 8^3 at beta = 1, SU(2) 4^4 at beta = 2.3, SU(3) 4^4 (and 8^4 unless
``--quick``) at beta = 6, batches of 1, 64 and 512 configurations (8^4: 1 and 16), complex128,
after 3 thermalizing sweeps from a hot start. ``ms/sweep`` is one batched sweep of every link
(:func:`hpcflow.updates.heatbath.heatbath_sweep`, :func:`~hpcflow.updates.heatbath.
overrelax_sweep`), ``us/cfg`` that divided by the batch, ``links/s`` the link updates per second.
With ``--split`` the staples (:func:`~hpcflow.updates.heatbath.staple_at`) and the attempt-0
random numbers of a heat-bath sweep are timed alone (the rest: rejection rounds and the link
algebra). 1 thread by default. Prints a table and writes JSON.

    python perf/bench_updates.py [--device cpu|cuda] [--threads 1] [--repeats 3] [--quick]
                                 [--split] [--out perf/out/bench_updates.json]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, time_it, write_json  # noqa: E402

CASES = [
    {"group": "U1", "shape": [4, 4, 4], "beta": 1.0, "batches": [1, 64, 512]},
    {"group": "U1", "shape": [8, 8, 8], "beta": 1.0, "batches": [1, 64, 512]},
    {"group": "SU2", "shape": [4, 4, 4, 4], "beta": 2.3, "batches": [1, 64, 512]},
    {"group": "SU3", "shape": [4, 4, 4, 4], "beta": 6.0, "batches": [1, 64, 512]},
    {"group": "SU3", "shape": [8, 8, 8, 8], "beta": 6.0, "batches": [1, 16]},
]


def run_case(group_name: str, shape: list[int], beta: float, batch: int, device: str,
             repeats: int, split: bool) -> dict:
    from hpcflow.lattice.groups import get_group
    from hpcflow.lattice.random import stream_keys
    from hpcflow.updates import heatbath as hb

    dev = torch.device(device)
    group = get_group(group_name)
    nd = len(shape)
    links = group.random((batch, nd, *shape), generator=torch.Generator().manual_seed(0)).to(dev)
    keys = stream_keys(0, 0, range(batch), device=dev)
    with torch.no_grad():
        for sweep in range(3):  # thermalize a little: acceptance rates as in production
            links = hb.heatbath_sweep(links, group, beta, keys, sweep)
        counter = iter(range(3, 10**6))
        big = batch * nd * math.prod(shape) > 1_000_000
        reps = max(1, repeats // 2) if big else repeats
        t_hb = time_it(lambda: hb.heatbath_sweep(links, group, beta, keys, next(counter)), dev,
                       repeats=reps, warmup=1)
        t_or = time_it(lambda: hb.overrelax_sweep(links, group), dev, repeats=reps, warmup=1)
        extra = {}
        if split:
            # staples and attempt-0 random draws of one sweep (2 Nd half-lattice steps), over
            # the same groups of configurations as the sweep
            volume = math.prod(shape)
            step = max(1, 2 * hb._CPU_CHUNK_LINKS // volume) if dev.type == "cpu" else batch
            groups = [(b0, min(batch, b0 + step)) for b0 in range(0, batch, step)]
            t_st = time_it(lambda: [hb.staple_at(links[b0:b1], mu, p, group) for mu in range(nd)
                                    for p in (0, 1) for b0, b1 in groups],
                           dev, repeats=reps, warmup=1)
            sites = hb.parity_sites(shape, 0, 0, dev)
            rngs = [hb.LinkRandom(keys[b0:b1], sites, 0, 0, 0) for b0, b1 in groups]
            if group.nc == 1:
                def draw():
                    return [rng.uniforms(0, 2) for rng in rngs]  # von Mises attempt 0
            else:
                def draw():
                    return [hb._first_draws(rng, range(2 * group.nc - 3)) for rng in rngs]
            t_rn = time_it(draw, dev, repeats=reps, warmup=1)
            extra = {"staple_ms": t_st["median_ms"],
                     "first_draws_ms": 2 * nd * t_rn["median_ms"]}
    n_links = batch * nd * math.prod(shape)
    return {
        "group": group_name, "shape": shape, "beta": beta, "batch": batch, "device": device,
        "case": f"{group_name} {'x'.join(map(str, shape))} B={batch}",
        "hb_ms": t_hb["median_ms"], "or_ms": t_or["median_ms"],
        "hb_us_per_cfg": 1e3 * t_hb["median_ms"] / batch,
        "or_us_per_cfg": 1e3 * t_or["median_ms"] / batch,
        "hb_links_per_s": n_links / (1e-3 * t_hb["median_ms"]),
        "or_links_per_s": n_links / (1e-3 * t_or["median_ms"]),
        "timing_hb": t_hb, "timing_or": t_or, **extra,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: default)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="skip SU(3) 8^4")
    p.add_argument("--split", action="store_true", help="also time staples and random draws")
    p.add_argument("--out", default="perf/out/bench_updates.json")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    rows = []
    for case in CASES:
        if args.quick and case["shape"][0] == 8 and len(case["shape"]) == 4:
            continue
        for batch in case["batches"]:
            rows.append(run_case(case["group"], case["shape"], case["beta"], batch,
                                 args.device, args.repeats, args.split))
            r = rows[-1]
            print(f"  {r['case']}: heat bath {r['hb_ms']:.1f} ms, over-relaxation "
                  f"{r['or_ms']:.1f} ms per sweep", flush=True)
    print()
    columns = [("case", "case", ""), ("hb_ms", "HB ms/sweep", ".1f"),
               ("hb_us_per_cfg", "HB us/cfg", ".0f"), ("hb_links_per_s", "HB links/s", ".3g"),
               ("or_ms", "OR ms/sweep", ".1f"), ("or_us_per_cfg", "OR us/cfg", ".0f"),
               ("or_links_per_s", "OR links/s", ".3g")]
    if args.split:
        columns += [("staple_ms", "staples ms", ".1f"), ("first_draws_ms", "draws ms", ".1f")]
    print_table(rows, columns)
    path = write_json(args.out, {"benchmark": "updates", "machine": machine(),
                                 "dtype": "complex128", "results": rows})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
