"""Independence Metropolis over flow proposals (PHYSICS.md, "Training and sampling").

Proposals ``U_i ~ q`` are accepted with probability ``min(1, w_i / w_state)``, ``w = exp(-S -
log q)``; the chain is exact in the limit whatever the quality of ``q`` (arXiv:1904.12072).
"""

from __future__ import annotations

import numpy as np

__all__ = ["independence_metropolis"]


def independence_metropolis(log_weight: np.ndarray, uniforms: np.ndarray, *,
                            state_log_weight: float | None = None, state_index: int = -1):
    """Run the chain through proposals in order.

    log_weight: ``[n]`` float64 ``-S - log q`` of the proposals; uniforms: ``[n]`` in ``[0, 1)``.
    ``state_log_weight`` / ``state_index``: the chain state before the first proposal (to
    continue a chain); with ``None`` the first proposal starts the chain and is accepted.
    Returns ``(mcmc_state [n] int64, accepted [n] bool, last_log_weight, last_index)``:
    ``mcmc_state[i]`` is the index of the state after step ``i`` (``-1`` only if it is the
    carried-in state of an earlier batch, reported as ``state_index``).
    """
    n = len(log_weight)
    state = np.empty(n, dtype=np.int64)
    accepted = np.zeros(n, dtype=bool)
    cur_lw, cur = state_log_weight, state_index
    log_u = np.log(np.maximum(uniforms, np.finfo(np.float64).tiny))
    for i in range(n):
        lw = log_weight[i]
        if cur_lw is None or (np.isfinite(lw) and log_u[i] < lw - cur_lw):
            cur_lw, cur = lw, i
            accepted[i] = True
        state[i] = cur
    return state, accepted, cur_lw, cur
