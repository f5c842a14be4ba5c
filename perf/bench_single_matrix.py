"""Single-matrix SU(3) flows: Haar -> class-function densities of arXiv:2008.05456.

Targets (docs/physics.md, "SU(N) spectral transform"), densities with respect to the
normalized Haar measure:

    log p(U) = (beta / 3) Re tr(c1 U + c2 U^2 + c3 U^3) - log Z,   beta = 9,
    c = [0.98, -0.63, -0.21], [0.17, -0.65, 1.22], [1, 0, 0].

Flow: a stack of ``--layers`` unconditioned spectral layers (``SUNTransform(SU3, bins, modes)``,
each with a learnable parameter vector in place of a context network), applied to Haar samples;
``log q(U) = - sum_layers log J`` (the Haar prior has ``log q = 0``). Training: reverse KL,
loss = batch mean of ``log q - log p`` (Adam, cosine-decayed learning rate). Training runs on
the eigen-angles only (the eigenvectors are carried along unchanged by every layer and the
targets are class functions); the evaluation pushes 10^4 fresh Haar matrices through the full
matrix transform (eigen-decomposition in every layer, target from ``tr U^k``) and reports

    ESS = (sum w)^2 / (n sum w^2),   w = exp(log p - log q),   log Z ~ log mean w,
    KL(q || p) = mean(log q - log p) + log Z_exact,

with the matrix and angle paths compared (their ``log q`` must agree to rounding) and
``log Z`` against the Weyl-formula quadrature of :func:`exact_log_z`.

Usage: ``python perf/bench_single_matrix.py [--layers 6] [--bins 8] [--modes 2] [--steps 1000]
[--batch 2048] [--lr 0.01] [--eval 10000] [--threads 1] [--out perf/out/bench_single_matrix.json]``
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_json  # noqa: E402

from hpcflow.flows.spectral import SUNTransform, unitary_eig  # noqa: E402
from hpcflow.lattice.groups import SUN  # noqa: E402

BETA = 9.0
TARGETS = {
    "c=[0.98,-0.63,-0.21]": (0.98, -0.63, -0.21),
    "c=[0.17,-0.65,1.22]": (0.17, -0.65, 1.22),
    "c=[1,0,0]": (1.0, 0.0, 0.0),
}


def log_p_angles(phi: torch.Tensor, c) -> torch.Tensor:
    """Unnormalized ``log p`` from eigen-angles ``phi [..., 3]``: ``Re tr U^k = sum cos(k phi)``."""
    return (BETA / 3.0) * sum(ck * torch.cos(k * phi).sum(-1) for k, ck in enumerate(c, 1))


def exact_log_z(c, grid: int = 512) -> float:
    """``log Z`` by the Weyl integration formula on a periodic grid of the two free angles:
    ``Z = int H f / int H`` (trapezoid rule, spectrally accurate for these smooth periodic
    integrands; 512^2 points agree with the Bessel-determinant formula for c = [1, 0, 0] to 1e-15).
    """
    t = torch.arange(grid, dtype=torch.float64) * (2 * math.pi / grid)
    a, b = torch.meshgrid(t, t, indexing="ij")
    phi = torch.stack([a, b, -a - b], dim=-1)
    e = torch.polar(torch.ones_like(phi), phi)
    h = ((e[..., 0] - e[..., 1]).abs() * (e[..., 0] - e[..., 2]).abs()
         * (e[..., 1] - e[..., 2]).abs()) ** 2
    return math.log((h * torch.exp(log_p_angles(phi, c))).sum().item() / h.sum().item())


def log_p_matrix(u: torch.Tensor, c) -> torch.Tensor:
    """Unnormalized ``log p`` from matrices ``u [..., 3, 3]``."""
    out, p = 0.0, u
    for k, ck in enumerate(c, 1):
        if k > 1:
            p = p @ u
        out = out + ck * p.diagonal(dim1=-2, dim2=-1).sum(-1).real
    return (BETA / 3.0) * out


class SpectralStack(torch.nn.Module):
    """``layers`` SU(3) spectral maps with free parameters: ``[layers, n_params]``."""

    def __init__(self, layers: int, bins: int, modes: int):
        super().__init__()
        self.lt = SUNTransform(SUN(3), bins=bins, modes=modes)
        self.params = torch.nn.Parameter(torch.zeros(layers, self.lt.n_params, dtype=torch.float64))

    def angles(self, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Haar eigen-angles ``phi [B, 3]`` -> model angles and ``log q [B]``."""
        log_q = phi.new_zeros(phi.shape[0])
        for p in self.params:
            phi, log_j = self.lt.spectral(phi, p)
            log_q = log_q - log_j
        return phi, log_q

    def matrices(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Haar matrices ``u [B, 3, 3]`` -> model matrices and ``log q [B]`` (full transform)."""
        log_q = u.real.new_zeros(u.shape[0])
        for p in self.params:
            u, log_j = self.lt.transform(u, p)
            log_q = log_q - log_j
        return u, log_q


def ess(log_w: torch.Tensor) -> float:
    w = torch.exp(log_w - log_w.max())
    return (w.sum() ** 2 / (w.numel() * (w * w).sum())).item()


def train_one(name: str, c, args, seed: int) -> dict:
    torch.manual_seed(seed)
    group = SUN(3)
    model = SpectralStack(args.layers, args.bins, args.modes)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, amsgrad=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps, eta_min=args.lr / 30)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(args.steps):
        with torch.no_grad():
            phi0, _ = unitary_eig(group.random((args.batch,), generator=gen))
        phi, log_q = model.angles(phi0)
        loss = (log_q - log_p_angles(phi, c)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if args.verbose and (step % 250 == 0 or step == args.steps - 1):
            with torch.no_grad():
                e = ess(log_p_angles(phi, c) - log_q)
            print(f"  {name} step {step:5d} loss {loss.item():+.4f} batch ESS {e:.3f}", flush=True)
    train_s = time.perf_counter() - t0

    with torch.no_grad():
        u0 = group.random((args.eval,), generator=torch.Generator().manual_seed(seed + 1000))
        t1 = time.perf_counter()
        u, log_q = model.matrices(u0)
        eval_s = time.perf_counter() - t1
        log_w = log_p_matrix(u, c) - log_q
        _, log_q_angles = model.angles(unitary_eig(u0)[0])
        unitarity = (u.mH @ u - torch.eye(3, dtype=u.dtype)).abs().max().item()
    n = log_w.numel()
    log_z = (torch.logsumexp(log_w, 0) - math.log(n)).item()
    log_z_exact = exact_log_z(c)
    return {
        "target": name, "c": list(c), "beta": BETA, "layers": args.layers, "bins": args.bins,
        "modes": args.modes, "n_params": args.layers * model.lt.n_params, "steps": args.steps,
        "batch": args.batch, "lr": args.lr, "train_s": train_s, "eval_n": n, "eval_s": eval_s,
        "ess": ess(log_w), "log_z": log_z, "log_z_exact": log_z_exact,
        "kl": (-log_w).mean().item() + log_z_exact,
        "max_dlogq_matrix_vs_angles": (log_q - log_q_angles).abs().max().item(),
        "max_unitarity_error": unitarity,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--bins", type=int, default=8)
    ap.add_argument("--modes", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--eval", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", nargs="*", default=list(TARGETS), choices=list(TARGETS))
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--out", default="perf/out/bench_single_matrix.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    rows = [train_one(name, TARGETS[name], args, args.seed + i)
            for i, name in enumerate(args.targets)]
    print_table(rows, [
        ("target", "target", ""), ("ess", "ESS", ".3f"), ("log_z", "log Z", ".4f"),
        ("log_z_exact", "exact", ".4f"),
        ("kl", "KL(q||p)", ".1e"), ("train_s", "train s", ".0f"),
        ("eval_s", "eval s", ".2f"), ("max_dlogq_matrix_vs_angles", "|dlogq|", ".1e"),
    ])
    settings = {k: getattr(args, k) for k in ("layers", "bins", "modes", "steps", "batch", "lr",
                                              "eval", "threads", "seed")}
    path = write_json(args.out, {"machine": machine(), "settings": settings, "results": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
