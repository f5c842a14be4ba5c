"""Benchmark the SU(N) eigen-decomposition: closed forms (``unitary_eig(w, "closed")``) against
the batched ``eigh`` route (``"eigh"``), forward alone and forward + backward, for SU(2) and SU(3)
batches, and one ``SUNTransform.transform`` call of the size the SU(3) 4D flow uses
(``configs/su3_4d.yaml``: the largest batch of open loops one update transforms at once).
``fused``: the closed form by the fused C++ kernel (``csrc/eig.cpp``; SU(3), CPU tensors; for
the transform also the fused eigen-angle map, ``csrc/su3.cpp``); elsewhere it is the closed
form's tensor operations.

    python perf/bench_eigen.py [--sizes 1000 10000 100000] [--device cpu|cuda] [--threads 1]

Forward + backward differentiates ``sum(phi) + sum(Re V)`` (the backward costs the same for
any loss, and is the same code for both methods); the transform's backward goes through the
spline maps as in training. The table shows the fastest of ``--repeats`` calls (robust on a
shared machine); the JSON holds the median too. It also counts the operator calls of one
forward and of its backward (every call a ``TorchDispatchMode`` sees: on a GPU each is a kernel
launch or a view, and at small batches their number sets the time; issue 19): they do not
depend on the batch size.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, time_it, write_json  # noqa: E402

from hpcflow import build_model, load_config  # noqa: E402
from hpcflow.flows.prior import STREAM_TRAIN  # noqa: E402
from hpcflow.flows.spectral import SUNTransform, unitary_eig  # noqa: E402
from hpcflow.lattice.groups import SUN  # noqa: E402

METHODS = ("eigh", "closed", "fused")


def _eig(method: str) -> tuple[str, bool]:
    """``(unitary_eig method, fused)`` of a benchmark method."""
    return ("closed", True) if method == "fused" else (method, False)


class _OpCount(TorchDispatchMode):
    """Counts the operator calls below the Python dispatcher."""

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.n += 1
        return func(*args, **(kwargs or {}))


def count_ops(loss_fn) -> tuple[int, int]:
    """Operator calls of ``loss_fn()`` (the forward, returning a scalar) and of its backward."""
    loss_fn()  # caches of constants are filled on the first call
    with _OpCount() as fwd:
        loss = loss_fn()
    with _OpCount() as bwd:
        loss.backward()
    return fwd.n, bwd.n


def _decomposition_fns(w: torch.Tensor, method: str):
    """``(forward, forward + backward, loss)`` closures for one batch ``w: [M, N, N]``."""
    leaf = w.clone().requires_grad_(True)
    name, fused = _eig(method)

    def forward():
        with torch.no_grad():
            unitary_eig(w, name, fused=fused)

    def loss():
        phi, v = unitary_eig(leaf, name, fused=fused)
        return phi.sum() + v.real.sum()

    def forward_backward():
        loss().backward()
        leaf.grad = None

    return forward, forward_backward, loss


def bench_decomposition(nc: int, size: int, dtype: torch.dtype, device: torch.device,
                        repeats: int) -> dict:
    w = SUN(nc).random((size,), generator=torch.Generator().manual_seed(0), dtype=dtype)
    w = w.to(device)
    row = {"what": f"SU({nc}) eig", "shape": f"{size}", "device": str(device),
           "dtype": str(dtype).removeprefix("torch.")}
    for method in METHODS:
        fwd, fwd_bwd, loss = _decomposition_fns(w, method)
        _record(row, method, time_it(fwd, device, repeats=repeats),
                time_it(fwd_bwd, device, repeats=repeats), count_ops(loss))
    return _speedups(row)


def transform_shape(config: str) -> tuple[int, int, int]:
    """``(B, n, N)`` of the largest ``transform`` call in one forward pass of the flow of
    ``config`` at its training batch size (recorded on a real pass, not read from internals)."""
    cfg = load_config(config)
    model = build_model(cfg)
    lt = model.link_transform
    shapes = []
    original = lt.transform

    def record(w, params, *, inverse=False):
        shapes.append(tuple(w.shape[:2]))
        return original(w, params, inverse=inverse)

    lt.transform = record
    with torch.no_grad():
        model(model.prior(range(cfg.train.batch_size), seed=0, stream=STREAM_TRAIN))
    b, n = max(shapes, key=lambda s: s[0] * s[1])
    return b, n, lt.nc


def bench_transform(config: str, dtype: torch.dtype, device: torch.device, repeats: int) -> dict:
    b, n, nc = transform_shape(config)
    gen = torch.Generator().manual_seed(1)
    w = SUN(nc).random((b, n), generator=gen, dtype=dtype).to(device)
    row = {"what": f"SUNTransform SU({nc})", "shape": f"{b}x{n}", "device": str(device),
           "dtype": str(dtype).removeprefix("torch.")}
    for method in METHODS:
        name, fused = _eig(method)
        lt = SUNTransform(SUN(nc), bins=8, eig=name, fused=fused, fused_eig=fused)
        params = 0.5 * torch.randn(b, n, lt.n_params, generator=gen, dtype=w.real.dtype)
        params = params.to(device).requires_grad_(True)
        leaf = w.clone().requires_grad_(True)

        def forward(lt=lt, params=params):
            with torch.no_grad():
                lt.transform(w, params)

        def loss(lt=lt, params=params, leaf=leaf):
            w_new, log_j = lt.transform(leaf, params)
            return w_new.real.sum() + log_j.sum()

        def forward_backward(loss=loss, params=params, leaf=leaf):
            loss().backward()
            leaf.grad = params.grad = None

        ops = count_ops(loss)
        leaf.grad = params.grad = None
        _record(row, method, time_it(forward, device, repeats=repeats),
                time_it(forward_backward, device, repeats=repeats), ops)
    return _speedups(row)


def _record(row: dict, method: str, fwd: dict, fwd_bwd: dict, ops: tuple[int, int]) -> None:
    row[f"{method}_fwd_ms"], row[f"{method}_fwd_median_ms"] = fwd["min_ms"], fwd["median_ms"]
    row[f"{method}_fb_ms"], row[f"{method}_fb_median_ms"] = fwd_bwd["min_ms"], fwd_bwd["median_ms"]
    row[f"{method}_ops_fwd"], row[f"{method}_ops_bwd"] = ops


def _speedups(row: dict) -> dict:
    row["fwd_speedup"] = row["eigh_fwd_ms"] / row["closed_fwd_ms"]
    row["fb_speedup"] = row["eigh_fb_ms"] / row["closed_fb_ms"]
    row["fused_fwd_speedup"] = row["closed_fwd_ms"] / row["fused_fwd_ms"]
    row["fused_fb_speedup"] = row["closed_fb_ms"] / row["fused_fb_ms"]
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int, default=[1000, 10_000, 100_000])
    p.add_argument("--groups", nargs="+", type=int, default=[2, 3], choices=[2, 3])
    p.add_argument("--config", default="configs/su3_4d.yaml",
                   help="flow whose transform call is timed ('' to skip)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="perf/out/bench_eigen.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = torch.complex128 if args.dtype == "float64" else torch.complex64
    rows = [bench_decomposition(nc, size, dtype, device, args.repeats)
            for nc in args.groups for size in args.sizes]
    if args.config:
        rows.append(bench_transform(args.config, dtype, device, args.repeats))
    print_table(rows, [("what", "what", ""), ("shape", "batch", ""), ("dtype", "dtype", ""),
                       ("eigh_fwd_ms", "eigh fwd ms", ".2f"),
                       ("closed_fwd_ms", "closed fwd ms", ".2f"),
                       ("fwd_speedup", "speedup", ".1f"),
                       ("eigh_fb_ms", "eigh fwd+bwd ms", ".2f"),
                       ("closed_fb_ms", "closed fwd+bwd ms", ".2f"),
                       ("fb_speedup", "speedup", ".1f"),
                       ("fused_fwd_ms", "fused fwd ms", ".2f"),
                       ("fused_fb_ms", "fused fwd+bwd ms", ".2f"),
                       ("fused_fb_speedup", "x closed", ".1f"),
                       ("eigh_ops_fwd", "eigh ops fwd", ""), ("eigh_ops_bwd", "bwd", ""),
                       ("closed_ops_fwd", "closed ops fwd", ""), ("closed_ops_bwd", "bwd", ""),
                       ("fused_ops_fwd", "fused ops fwd", ""), ("fused_ops_bwd", "bwd", "")])
    path = write_json(args.out, {"benchmark": "eigen", "machine": machine(),
                                 "threads": torch.get_num_threads(), "results": rows})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
