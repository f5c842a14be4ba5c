"""``hpcflow analyze``: observables of a sample file with honest errors, beside exact values.

For weighted proposals (a flow's samples, the final configurations of annealing or
stochastic-flow trajectories) two estimates of every observable:

- Markov chain: ``mean(O(links[mcmc_state]))`` of the independence Metropolis chain, with the
  error from the integrated autocorrelation time (Wolff 2004);
- reweighted: ``sum w O / sum w`` over all proposals, with a jackknife error;

plus acceptance, ESS and ``log Z`` (relative to the start of the trajectories when that
start's own ``log Z`` is unknown). For a Markov chain (heat bath, HMC) the chain estimate only.
Observables are evaluated once per proposal; the chain reuses them through ``mcmc_state``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from ..estimators import (
    Estimate,
    acceptance_rate,
    chain_mean,
    ess,
    log_z_estimate,
    reweighted_mean,
)
from ..io.samples import open_samples
from ..lattice import exact
from ..lattice.groups import get_group
from ..lattice.observables import average_plaquette, polyakov_loop, topological_charge, wilson_loop

__all__ = ["measure", "analyze_file", "format_report"]


def measure(links: torch.Tensor, group, nd: int) -> dict[str, torch.Tensor]:
    """Per-configuration observables of ``links [B, Nd, *L, Nc, Nc]``: name -> ``[B]``."""
    out = {"plaquette": average_plaquette(links, group),
           "wilson_1x2": wilson_loop(links, group, 1, 2),
           "wilson_2x2": wilson_loop(links, group, 2, 2),
           "polyakov_abs": polyakov_loop(links, group, axis=0).abs()}
    if nd == 2 and group.nc == 1:
        q = topological_charge(links, group)
        out["topological_charge"] = q
        out["q_squared"] = q**2
    return out


def analyze_file(path: str | Path, *, batch_size: int = 256) -> dict:
    """Every estimate for one sample file (a shard, ``samples.h5``, or HMC output)."""
    with open_samples(path) as s:
        attrs = s.attrs
        group = get_group(attrs["group"])
        shape = tuple(int(x) for x in attrs["lattice_shape"])
        nd, volume, beta = len(shape), math.prod(shape), float(attrs["beta"])
        n = s.n
        if n == 0:
            return {"file": str(path), "n": 0, "observables": {}}
        values: dict[str, list[np.ndarray]] = {}
        for batch in s.links.iter_batches(batch_size):
            with torch.no_grad():
                obs = measure(torch.from_numpy(batch), group, nd)
            for k, v in obs.items():
                values.setdefault(k, []).append(v.double().numpy())
        series = {k: np.concatenate(v) for k, v in values.items()}
        log_w = s.log_weight
        state, accepted = s.mcmc_state, s.accepted
        starts = s.chain_starts
        flow, kind, log_z_start = s.weighted, attrs["sampler"], float(attrs["log_z_start"])
    result = {"file": str(path), "n": int(n), "group": group.name, "lattice_shape": list(shape),
              "beta": beta, "kind": kind, "observables": {}}
    for name, x in series.items():
        entry = {"chain": chain_mean(x[state]).to_dict()}
        if flow:
            entry["reweighted"] = reweighted_mean(x, log_w).to_dict()
        result["observables"][name] = entry
    if "q_squared" in series:
        chi = chain_mean(series["q_squared"][state] / volume)
        result["observables"]["topological_susceptibility"] = {"chain": chi.to_dict()}
    result["acceptance"] = acceptance_rate(_steps_after_start(accepted, starts)).to_dict()
    if flow:
        result["ess"] = ess(log_w)
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


def _steps_after_start(accepted: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Acceptance flags without the first proposal of each chain (accepted by construction)."""
    keep = np.ones(len(accepted), dtype=bool)
    keep[np.asarray(starts, dtype=np.int64)] = False
    return accepted[keep] if keep.any() else accepted


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
    ex = result["exact"]
    rows = [("observable", "Markov chain", "tau_int", "reweighted", "exact", "dev/sigma")]
    for name, e in result["observables"].items():
        chain = e["chain"]
        exact_value = ex.get(name)
        dev = ""
        if exact_value is not None and chain["error"] > 0:
            dev = f"{(chain['value'] - exact_value) / chain['error']:+.2f}"
        tau = chain.get("tau_int")
        rows.append((name, _fmt(chain), f"{tau:.2f}" if tau is not None else "",
                     _fmt(e.get("reweighted")),
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
        lines.append(f"ESS: {result['ess']:.4f}   {what}: {_fmt(lz)}{extra}")
    return "\n".join(lines)
