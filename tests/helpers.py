"""Shared test helpers: small lattices for every dimension, random links."""

import math

import torch

from hpcflow.lattice.groups import get_group

# Unequal extents catch axis mix-ups; small enough for SU(3) in 4D.
SHAPES = {2: (4, 3), 3: (3, 4, 2), 4: (2, 3, 2, 3)}
GROUPS = ("U1", "SU2", "SU3")


def random_links(group_name, shape, batch=2, *, generator=None, dtype=torch.complex128):
    """Haar-random links ``[batch, Nd, *shape, Nc, Nc]``."""
    group = get_group(group_name)
    return group, group.random((batch, len(shape), *shape), generator=generator, dtype=dtype)


# A tiny U(1) training configuration: trains in seconds, float64 and deterministic.
TINY_U1 = [
    "lattice.shape=[4, 4]", "lattice.group=U1", "action.beta=2.0",
    "model.layers=8", "model.net.hidden=[4]", "model.bins=4", "model.dtype=float64",
    "train.batch_size=8", "train.steps=12", "train.log_every=1", "train.eval_every=4",
    "train.eval_batch_size=16", "train.checkpoint_every=3", "train.deterministic=true",
    "train.plot=false", "train.lr=0.01",
]


def perturb(module: torch.nn.Module, scale: float, generator=None) -> torch.nn.Module:
    """Add ``scale`` times standard normals to every parameter (in ``parameters()`` order, from
    ``generator`` or the global generator): a flow away from the identity it starts as."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def flows_by_mode(overrides: list[str], key: str, modes=("torch", "fused")) -> dict:
    """One flow per value of the config ``key`` (e.g. ``distributed.splines``), built from
    ``overrides`` with the same parameters: ``0.05 N(0, 1)`` drawn per parameter by its size
    (a moderate, non-identity flow, the same for every mode)."""
    from hpcflow import build_model, load_config

    flows = {}
    for mode in modes:
        torch.manual_seed(0)
        flows[mode] = build_model(load_config(None, [*overrides, f"{key}={mode}"]))
        with torch.no_grad():
            for prm in flows[mode].parameters():
                prm.copy_(0.05 * torch.randn(prm.shape, generator=torch.Generator().manual_seed(
                    prm.numel()), dtype=prm.dtype))
    return flows


def clean_env() -> dict:
    """The environment without an enclosing MPI launcher's variables (so that a subprocess is
    a fresh single process, or a fresh mpiexec job)."""
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_"))}


def mpiexec() -> str:
    """The venv's mpiexec (mpich wheel) or the one on PATH."""
    import shutil
    import sys
    from pathlib import Path

    local = Path(sys.executable).parent / "mpiexec"
    found = str(local) if local.exists() else shutil.which("mpiexec")
    assert found, "mpiexec not found: install the mpich wheel (make install)"
    return found


def su_basis(n: int) -> torch.Tensor:
    """Orthonormal basis ``T_a: [n^2 - 1, n, n]`` of anti-Hermitian traceless matrices,
    ``Re tr(T_a^dagger T_b) = delta_ab``."""
    ts = []
    for i in range(n):
        for j in range(i + 1, n):
            a = torch.zeros(n, n, dtype=torch.complex128)
            a[i, j], a[j, i] = 1.0, -1.0
            b = torch.zeros(n, n, dtype=torch.complex128)
            b[i, j], b[j, i] = 1j, 1j
            ts += [a / math.sqrt(2.0), b / math.sqrt(2.0)]
    for k in range(1, n):
        d = torch.zeros(n, dtype=torch.complex128)
        d[:k], d[k] = 1.0, -float(k)
        ts.append(torch.diag(1j * d / math.sqrt(k * (k + 1))))
    return torch.stack(ts)


def run_ctx(run_dir=None, comm=None, *, messages: list | None = None):
    """A quiet run context (no terminal output) for one process, or for ``comm``;
    ``messages`` collects what the command logs."""
    import logging

    from hpcflow.app.context import RunContext
    from hpcflow.distributed import NoneComm

    ctx = RunContext(comm or NoneComm(device="cpu"), run_dir, terminal=False)
    if messages is not None:
        class _Collect(logging.Handler):
            def emit(self, record):
                messages.append(record.getMessage())

        ctx.log.addHandler(_Collect())
    return ctx


TINY_FLOW = [
    "lattice.shape=[4, 4]", "lattice.group=U1", "action.beta=1.0",
    "model.layers=8", "model.net.hidden=[4]", "model.bins=4", "model.dtype=float64",
    "train.batch_size=16", "train.steps=10", "train.eval_every=0", "train.plot=false",
    "train.lr=0.01",
]
"""A 2D U(1) flow that trains in seconds: the run that sampling tests draw from."""


def kill_two_ranks_at(cmd, out, delays, *, cwd=None, after_each=None) -> int:
    """Start ``cmd`` (an ``mpiexec -n 2`` sampler writing shards into ``out``) once per delay,
    kill -9 its whole process group that long after both shards exist, then call
    ``after_each()`` (checks of the files left behind); returns the kills."""
    import os
    import signal
    import subprocess
    import time
    from pathlib import Path

    kills = 0
    for delay in delays:
        proc = subprocess.Popen(cmd, env=clean_env(), cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and not all(
                (Path(out) / f"shard-r0000{r}.h5").exists() for r in (0, 1)):
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and both ranks at once
            kills += 1
        proc.wait(timeout=60)
        if after_each is not None:
            after_each()
    return kills


# ------------------------------------------------------------- autocorrelated test processes
def ar1(rho, n, rng, size=()):
    """Stationary AR(1) ``x_t = rho x_{t-1} + e_t``, unit innovations: mean 0, variance
    ``1/(1 - rho^2)``, ``rho(t) = rho^|t|``, ``tau_int = (1 + rho) / (2 (1 - rho))``."""
    e = rng.normal(size=(*size, n))
    e[..., 0] /= math.sqrt(1.0 - rho**2)
    from scipy.signal import lfilter

    return lfilter([1.0], [1.0, -rho], e, axis=-1)


def tau_true(rho):
    return (1 + rho) / (2 * (1 - rho))


def sigma_mean_replicas(rho, lengths):
    """Exact error of the mean of all samples of independent stationary AR(1) chains of
    ``lengths`` (unit innovations): ``Var(sum_{i<=m} x_i) = (m (1+rho)/(1-rho)
    - 2 rho (1 - rho^m)/(1-rho)^2) / (1 - rho^2)`` for each."""
    var_sums = sum((m * (1 + rho) / (1 - rho) - 2 * rho * (1 - rho**m) / (1 - rho) ** 2)
                   / (1 - rho**2) for m in lengths)
    return math.sqrt(var_sums) / sum(lengths)
