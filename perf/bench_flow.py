"""Benchmark the flow: samples per second for sampling (no autograd) and for a training-sized
forward + backward pass of the reverse-KL loss, for the default U(1) configurations: the
reparameterized step (``train.gradient: reparameterized``) and the path-gradient step
(``path``: forward, inverse with frozen parameters, backward through both).

    python perf/bench_flow.py [--configs configs/u1_2d.yaml ...] [--batch 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, time_it, write_json  # noqa: E402

from hpcflow import build_action, build_model, load_config  # noqa: E402
from hpcflow.app.propose import path_log_prob  # noqa: E402
from hpcflow.flows.prior import STREAM_TRAIN  # noqa: E402

DEFAULT = ["configs/u1_2d.yaml", "configs/u1_3d.yaml", "configs/u1_4d.yaml"]


def bench(path: str, batch: int, repeats: int, device: torch.device, dtype: str) -> dict:
    cfg = load_config(path, [f"model.dtype={dtype}"])
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    with torch.no_grad():  # a generic (non-identity) flow: the cost does not depend on it
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    action = build_action(cfg)
    z = model.prior(range(batch), seed=0, stream=STREAM_TRAIN)

    def sample():
        with torch.no_grad():
            model(z)

    def train_step():
        u, logdet = model(z)
        loss = (action(u) - logdet).mean()
        loss.backward()

    def path_step():
        u, _ = model(z)
        loss = (path_log_prob(model, u) + action(u)).mean()
        loss.backward()

    t_s = time_it(sample, device, repeats=repeats, warmup=1)
    t_t = time_it(train_step, device, repeats=repeats, warmup=1)
    t_p = time_it(path_step, device, repeats=repeats, warmup=1)
    return {
        "config": path, "lattice": "x".join(map(str, cfg.lattice.shape)),
        "layers": len(model.layers), "params": sum(p.numel() for p in model.parameters()),
        "batch": batch, "dtype": dtype, "device": str(device),
        "sample_ms": t_s["median_ms"], "sample_per_s": batch / t_s["median_ms"] * 1e3,
        "train_ms": t_t["median_ms"], "train_per_s": batch / t_t["median_ms"] * 1e3,
        "path_ms": t_p["median_ms"], "path_per_s": batch / t_p["median_ms"] * 1e3,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=DEFAULT)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default="perf/out/bench_flow.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [bench(c, args.batch, args.repeats, torch.device(args.device), args.dtype)
            for c in args.configs]
    print_table(rows, [("config", "config", ""), ("lattice", "lattice", ""),
                       ("layers", "layers", "d"), ("params", "params", "d"),
                       ("batch", "batch", "d"), ("sample_ms", "sample ms", ".1f"),
                       ("sample_per_s", "samples/s", ".0f"), ("train_ms", "fwd+bwd ms", ".1f"),
                       ("train_per_s", "train samples/s", ".0f"), ("path_ms", "path ms", ".1f"),
                       ("path_per_s", "path samples/s", ".0f")])
    path = write_json(args.out, {"benchmark": "flow", "machine": machine(), "results": rows})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
