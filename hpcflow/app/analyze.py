"""``hpcflow analyze``: observables of a sample file with honest errors, beside exact values.

For weighted proposals (a flow's samples, the final configurations of annealing or
stochastic-flow trajectories) two estimates of every observable:

- Markov chain: ``mean(O(links[mcmc_state]))`` of the independence Metropolis chain, with the
  error from the integrated autocorrelation time (Wolff 2004);
- reweighted: ``sum w O / sum w`` over all proposals, with a jackknife error;

plus acceptance, ESS and ``log Z`` (relative to the start of the trajectories when that
start's own ``log Z`` is unknown). For a Markov chain (heat bath, HMC) the chain estimate only.
Observables are evaluated once per proposal; the chain reuses them through ``mcmc_state``.

Every rank runs its own chain (``SampleSet.chain_starts``): the chain estimates (and the
acceptance) treat those chains as replicas of one process (the Gamma method with replica,
U. Wolff, Comput. Phys. Commun. 156 (2004) 143), with Wolff's Q-value of the spread of their
means; concatenating them into one series would make false correlations at the joins.

Memory: the observables measured on the ranks (``obs/<name>``) are read without any links; a
file without them (format versions 1 and 2) has its links measured in batches of about
``batch_bytes`` in file order, keeping only a few float64 numbers per row, so a file larger than
the memory is analyzed.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import InputFileError
from ..estimators import (
    Estimate,
    acceptance_rate,
    chain_mean,
    ess,
    log_weight_variance,
    log_z_estimate,
    reweighted_mean,
    split_replicas,
)
from ..io.samples import open_samples
from ..lattice import exact
from ..lattice.groups import get_group
from ..lattice.observables import measure

__all__ = ["analyze_file", "format_report"]


def _batch_rows(row_shape, itemsize: int, batch_bytes: int) -> int:
    """Rows of ``row_shape`` (one configuration) with ``itemsize``-byte entries in a batch of
    at most ``batch_bytes`` (at least one row)."""
    return max(1, batch_bytes // (math.prod(row_shape) * itemsize))


def _measure_rows(links, group, batch_size: int, device=None) -> dict[str, np.ndarray]:
    """:func:`~hpcflow.lattice.observables.measure` (on ``device``) of every row of ``links``
    (a ``LazyRows`` ``[n, Nd, *L, Nc, Nc]``), ``batch_size`` rows at a time in file order:
    name -> ``[n]`` float64.

    Memory: one batch of links and its temporaries, and the results. These go into arrays made
    before the loop: small arrays kept from every batch would pin the freed temporaries of the
    batches (heap fragmentation) and grow the process by a large part of the links read (2/3
    of a 300 MB file in tests/app/test_analyze_scale.py).
    """
    n = len(links)
    out: dict[str, np.ndarray] = {}
    for start, batch in zip(range(0, n, batch_size), links.iter_batches(batch_size),
                            strict=True):
        with torch.no_grad():
            obs = measure(torch.from_numpy(batch).to(device or "cpu"), group)
        for k, v in obs.items():
            if k not in out:
                out[k] = np.empty(n, dtype=np.float64)
            out[k][start:start + len(batch)] = v.double().cpu().numpy()
    return out


def _chain_estimate(x: np.ndarray, state: np.ndarray, starts: np.ndarray) -> dict:
    """Chain estimate of an observable ``x: [n]`` (one value per row) along the Markov chains
    ``x[state]``, the chains of the ranks (first rows ``starts: [R]``) as replicas."""
    return chain_mean(x[state], replicas=starts).to_dict()


def analyze_file(path: str | Path, *, batch_size: int | None = None,
                 batch_bytes: int = 4 << 20, device=None) -> dict:
    """Every estimate for one sample file (a shard, ``samples.h5``, or HMC output).

    The observables measured when the rows were drawn (``obs/<name>``, format version 3) are
    read as they are: only the per-row scalars, no links. A file without them (versions 1 and
    2) is measured here, on ``device`` (default CPU), its links read ``batch_size`` rows at a
    time (default: as many rows as fit in ``batch_bytes``); memory grows with the rows only by
    a few float64 numbers per row.
    """
    with open_samples(path) as s:
        attrs = s.attrs
        group = get_group(attrs["group"])
        shape = tuple(int(x) for x in attrs["lattice_shape"])
        volume, beta = math.prod(shape), float(attrs["beta"])
        n = s.n
        if n == 0:
            return {"file": str(path), "n": 0, "observables": {}}
        if s.observable_names:
            series = {k: np.asarray(s.observable(k), dtype=np.float64)
                      for k in s.observable_names}
        else:
            if len(s.links) != n:
                raise InputFileError(s.path, f"stores {len(s.links)} configurations for {n} "
                                             "rows and no observables")
            if batch_size is None:
                batch_size = _batch_rows(s.links.shape[1:], s.links.dtype.itemsize,
                                         batch_bytes)
            series = _measure_rows(s.links, group, batch_size, device)
        log_w = s.log_weight
        state, accepted = s.mcmc_state, s.accepted
        starts = s.chain_starts
        flow, kind, log_z_start = s.weighted, attrs["sampler"], float(attrs["log_z_start"])
    lengths = _chain_lengths(starts, n)
    result = {"file": str(path), "n": int(n), "group": group.name, "lattice_shape": list(shape),
              "beta": beta, "kind": kind, "replicas": len(lengths), "chain_lengths": lengths,
              "observables": {}}
    for name, x in series.items():
        entry = {"chain": _chain_estimate(x, state, starts)}
        if flow:
            entry["reweighted"] = reweighted_mean(x, log_w).to_dict()
        result["observables"][name] = entry
    if "q_squared" in series:
        chi = _chain_estimate(series["q_squared"] / volume, state, starts)
        result["observables"]["topological_susceptibility"] = {"chain": chi}
    _warn_disagreeing_replicas(result["observables"])
    result["acceptance"] = acceptance_rate(_steps_after_start(accepted, starts)).to_dict()
    if flow:
        result["ess"] = ess(log_w)
        result["log_weight_var"] = log_weight_variance(log_w)
        lz = log_z_estimate(log_w).to_dict()
        if math.isfinite(log_z_start):
            lz["value"] += log_z_start
        else:
            result["log_z_relative"] = True  # log Z(beta) - log Z(beta_start)
        result["log_z"] = lz
    result["exact"] = {
        "plaquette": exact.exact_plaquette(group.name, shape, beta),
        "log_z": exact.exact_log_z(group.name, shape, beta),
        "topological_susceptibility": exact.exact_topological_susceptibility(
            group.name, shape, beta),
    }
    return result


def _chain_lengths(starts: np.ndarray, n: int) -> list[int]:
    """Lengths of the non-empty chains that start at the rows ``starts: [R]`` of ``n``."""
    lengths = np.diff(np.append(np.asarray(starts, dtype=np.int64), n))
    return [int(m) for m in lengths if m > 0]


def _warn_disagreeing_replicas(observables: dict, q_min: float = 1e-3) -> None:
    """RuntimeWarning for every observable whose chains' means disagree beyond their errors
    (Wolff's replica Q-value below ``q_min``)."""
    for name, e in observables.items():
        q = e["chain"].get("q_value")
        if q is not None and q < q_min:
            warnings.warn(
                f"{name}: the means of the {e['chain']['replicas']} chains disagree beyond "
                f"their errors (replica Q = {q:.2g}): chains too short, not thermalized or "
                "stuck", RuntimeWarning, stacklevel=2,
            )


def _steps_after_start(accepted: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
    """Each chain's acceptance flags without its first proposal (accepted by construction), the
    replicas of the acceptance rate; the whole chains when none has a second step."""
    chains = split_replicas(accepted, starts)
    rest = [c[1:] for c in chains if c.size > 1]
    return rest or chains


def _fmt(d: dict | None) -> str:
    if d is None:
        return ""
    return str(Estimate(d["value"], d["error"]))


def format_report(result: dict) -> str:
    """A readable table of :func:`analyze_file`'s result."""
    lines = [f"{result['file']}: {result['n']} configurations, {result.get('group', '')} "
             f"{'x'.join(map(str, result.get('lattice_shape', [])))} beta={result.get('beta')} "
             f"({result.get('kind', '')})"]
    if not result["n"]:
        return lines[0] + "\n(no complete rows)"
    replicas = result.get("replicas", 1)
    lengths = result.get("chain_lengths", [result["n"]])
    lines.append(f"Markov chains: {replicas} replicas (one per rank, {min(lengths)}.."
                 f"{max(lengths)} steps); Q: probability of a spread of their means this large"
                 if replicas > 1 else f"Markov chain: one chain of {lengths[0]} steps")
    ex = result["exact"]
    rows = [("observable", "Markov chain", "tau_int", "Q", "reweighted", "exact", "dev/sigma")]
    for name, e in result["observables"].items():
        chain = e["chain"]
        exact_value = ex.get(name)
        dev = ""
        if exact_value is not None and chain["error"] > 0:
            dev = f"{(chain['value'] - exact_value) / chain['error']:+.2f}"
        tau, q = chain.get("tau_int"), chain.get("q_value")
        rows.append((name, _fmt(chain), f"{tau:.2f}" if tau is not None else "",
                     f"{q:.2g}" if q is not None else "", _fmt(e.get("reweighted")),
                     f"{exact_value:.10g}" if exact_value is not None else "", dev))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"acceptance: {_fmt(result['acceptance'])}")
    if "ess" in result:
        lz = result["log_z"]
        exact_lz = ex.get("log_z")
        extra = f"   exact {exact_lz:.6f}" if exact_lz is not None else ""
        what = "log Z - log Z(beta_start)" if result.get("log_z_relative") else "log Z"
        lines.append(f"ESS: {result['ess']:.4f}   "
                     f"var(log w): {result.get('log_weight_var', math.nan):.4g}"
                     f"   {what}: {_fmt(lz)}{extra}")
    return "\n".join(lines)
