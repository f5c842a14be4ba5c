"""Benchmark the Haar prior: configurations per second drawn by the counter-based prior
(:func:`hpcflow.flows.prior.haar_prior`: one Philox pass over the batch on the device) against
the former per-sample generators (one CPU ``torch.Generator`` per sample, seeded from
``SeedSequence``, noise stacked and copied to the device), both ending in the same
``group.from_noise``. ``noise ms`` times the random numbers alone.

    python perf/bench_prior.py [--device cpu|cuda] [--dtype complex128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, time_it, write_json  # noqa: E402

from hpcflow.flows.prior import STREAM_TRAIN, haar_prior, prior_noise, sample_seed  # noqa: E402
from hpcflow.lattice.groups import Group, get_group  # noqa: E402

# (group, lattice, batch)
CASES = [("U1", (8, 8), 1024), ("U1", (4, 4, 4, 4), 256), ("SU3", (4, 4, 4, 4), 64)]


def generator_noise(group: Group, shape: Sequence[int], indices, *, seed: int, stream: int,
                    step: int = 0, dtype=torch.complex128, device=None) -> torch.Tensor:
    """The former prior's noise ``[B, *group noise]``: a CPU ``torch.Generator`` per sample,
    seeded with ``sample_seed(seed, stream, index, step)``, stacked, then copied to ``device``."""
    nd = len(shape)
    gens = [torch.Generator().manual_seed(sample_seed(seed, stream, int(i), step))
            for i in indices]
    return torch.stack([group.noise((nd, *shape), dtype=dtype, generator=g)
                        for g in gens]).to(device)


def haar_prior_generators(group: Group, shape: Sequence[int], indices, *, seed: int,
                          stream: int, step: int = 0, dtype=torch.complex128,
                          device=None) -> torch.Tensor:
    """The former :func:`hpcflow.flows.prior.haar_prior` (per-sample generators), kept here
    for the comparison: links ``[B, Nd, *shape, Nc, Nc]``."""
    return group.from_noise(generator_noise(group, shape, indices, seed=seed, stream=stream,
                                            step=step, dtype=dtype, device=device))


def bench(name: str, shape: tuple[int, ...], batch: int, device: torch.device,
          dtype: torch.dtype, repeats: int) -> dict:
    group = get_group(name)
    kw = {"seed": 0, "stream": STREAM_TRAIN, "step": 1, "dtype": dtype, "device": device}
    times = {
        "old_noise": time_it(lambda: generator_noise(group, shape, range(batch), **kw), device,
                             repeats=repeats, warmup=1),
        "new_noise": time_it(lambda: prior_noise(group, shape, range(batch), **kw), device,
                             repeats=repeats, warmup=1),
        "old": time_it(lambda: haar_prior_generators(group, shape, range(batch), **kw), device,
                       repeats=repeats, warmup=1),
        "new": time_it(lambda: haar_prior(group, shape, range(batch), **kw), device,
                       repeats=repeats, warmup=1),
    }
    ms = {k: t["median_ms"] for k, t in times.items()}
    return {
        "group": name, "lattice": "x".join(map(str, shape)), "batch": batch,
        "dtype": str(dtype).removeprefix("torch."), "device": str(device),
        "old_noise_ms": ms["old_noise"], "new_noise_ms": ms["new_noise"],
        "old_ms": ms["old"], "new_ms": ms["new"],
        "old_per_s": batch / ms["old"] * 1e3, "new_per_s": batch / ms["new"] * 1e3,
        "speedup": ms["old"] / ms["new"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="complex128", choices=["complex128", "complex64"])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="perf/out/bench_prior.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rows = [bench(name, shape, batch, device, dtype, args.repeats)
            for name, shape, batch in CASES]
    print_table(rows, [("group", "group", ""), ("lattice", "lattice", ""),
                       ("batch", "batch", "d"), ("dtype", "dtype", ""),
                       ("old_noise_ms", "old noise ms", ".1f"),
                       ("new_noise_ms", "new noise ms", ".1f"),
                       ("old_ms", "old ms", ".1f"), ("new_ms", "new ms", ".1f"),
                       ("old_per_s", "old draws/s", ".0f"), ("new_per_s", "new draws/s", ".0f"),
                       ("speedup", "speedup", ".2f")])
    path = write_json(args.out, {"benchmark": "prior", "machine": machine(), "results": rows})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
