"""Estimators with honest statistical errors, for Markov chains and for importance sampling.

Pure numpy functions on 1-D series ``x: [n]`` in the order they were generated.

Markov chains (autocorrelated data): the error of the mean is ``sigma = sqrt(2 tau_int Gamma(0)
/ n)`` with the integrated autocorrelation time summed up to a self-consistent window,

    Gamma(t)  = 1/(n - t) sum_{i=1}^{n-t} (x_i - xbar)(x_{i+t} - xbar),   rho(t) = Gamma(t)/Gamma(0)
    tau(W)    = 1/2 + sum_{t=1}^{W} rho(t),
    W         = the smallest W >= 1 with W >= c tau(W)        (c = 5 by default),
    d tau     = tau sqrt(2 (2W + 1) / n),

N. Madras and A. D. Sokal, J. Stat. Phys. 50 (1988) 109 ; U. Wolff, "Monte Carlo
errors with less errors", Comput. Phys. Commun. 156 (2004) 143, hep-lat/0306017 (the same
estimator, its error, and the correction for the bias that subtracting the sample mean causes).

Binning and the block jackknife give the same errors without a model of the correlations and
serve derived quantities (ratios, logs).

Replicas: ``R`` independent chains ``x^r: [N_r]`` of the same process (one per MPI rank) are
analyzed together (Wolff 2004, the Gamma method with replica; S. Schaefer, R. Sommer,
F. Virotta, Nucl. Phys. B 845 (2011) 93): one mean over all ``N = sum_r N_r`` samples, and

    Gamma(t)  = sum_r sum_{i=1}^{N_r-t} (x^r_i - xbar)(x^r_{i+t} - xbar) / sum_r (N_r - t)_+

about that global mean (Wolff's ``N - R t`` for lags shorter than every replica); the window,
the bias correction and the errors follow as above with ``n = N``. Wolff's check that the
replicas sample one distribution: ``chi^2 = sum_r N_r (xbar_r - xbar)^2 / C`` with
``C = 2 tau Gamma(0)``, ``R - 1`` degrees of freedom, ``Q = P(chi^2_{R-1} >= chi^2)``; a tiny
``Q`` means chains stuck in different regions (too short, not thermalized, not ergodic).

Importance sampling with weights ``w_i = exp(log_weight_i)`` (``log_weight = -S - log q``):

    <O>   = sum_i w_i O_i / sum_i w_i                      (self-normalized)
    ESS   = (sum_i w_i)^2 / (n sum_i w_i^2)                (in (0, 1], 1 for a perfect model)
    log Z = log( (1/n) sum_i w_i )                          (biased low by ~ (1/ESS - 1)/(2n))

all computed from log weights (``log_weight`` of order 1e4 is common: ``w`` itself overflows).

Independence Metropolis over independent proposals (the flows' and the non-equilibrium samplers'
exact correction): accept proposal ``i`` with probability ``min(1, w_i / w_state)``; the chain is
exact in the limit whatever the quality of the proposals (arXiv:1904.12072).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ChainEstimate",
    "Estimate",
    "TauInt",
    "acceptance_rate",
    "auto_binned_error",
    "autocorrelation",
    "binned_error",
    "chain_mean",
    "ess",
    "format_value_error",
    "independence_metropolis",
    "integrated_autocorrelation_time",
    "jackknife",
    "log_weight_variance",
    "log_z_estimate",
    "logsumexp",
    "reweighted_mean",
    "split_replicas",
]


# ----------------------------------------------------------------------------------- results
def format_value_error(value: float, error: float, digits: int = 2) -> str:
    """``0.69781 +- 0.00123 -> "0.6978(12)"``: the error's ``digits`` leading digits in
    parentheses, applying to the last digits of the value. Very large or small numbers get an
    exponent (``"1.2345(12)e-07"``); an unknown error shows as ``(?)``, a zero one as ``(0)``."""
    value, error = float(value), float(error)
    if not math.isfinite(value):
        return str(value)
    if not math.isfinite(error) or error < 0:
        return f"{value:.6g}(?)"
    if error == 0:
        return f"{value:.6g}(0)"
    mag = max(abs(value), error)
    exp = math.floor(math.log10(mag))
    if exp >= 5 or exp < -4:
        scale = 10.0**exp
        return f"{format_value_error(value / scale, error / scale, digits)}e{exp:+03d}"
    d = digits - 1 - math.floor(math.log10(error))
    if round(error * 10.0**d) >= 10**digits:  # 0.0999 -> "(10)", not "(100)"
        d -= 1
    if d > 0:
        return f"{value:.{d}f}({round(error * 10.0**d)})"
    q = 10.0 ** (-d)
    return f"{round(value / q) * q:.0f}({round(error / q) * q:.0f})"


@dataclass(frozen=True)
class Estimate:
    """A number with its one-sigma error; ``tau_int`` (when the error accounts for
    autocorrelation) and ``n`` (samples used) when known. ``str`` gives ``0.6978(12)``."""

    value: float
    error: float
    tau_int: float | None = None
    n: int | None = None

    def __str__(self) -> str:
        return format_value_error(self.value, self.error)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ChainEstimate(Estimate):
    """:class:`Estimate` of a Markov-chain mean (:func:`chain_mean`), with what the Gamma method
    found: ``tau_error`` (error of ``tau_int``), ``window`` (the summation window ``W``),
    ``replicas`` (number of independent chains ``R``) and, for ``R >= 2``, ``q_value``: the
    probability of replica means at least as far apart as observed (Wolff 2004's Q-value)."""

    tau_error: float | None = None
    window: int | None = None
    replicas: int = 1
    q_value: float | None = None


class TauInt(NamedTuple):
    """Integrated autocorrelation time ``tau`` with its error and the summation window."""

    tau: float
    error: float
    window: int


# --------------------------------------------------------------------------- autocorrelation
def _series(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"expected a 1-D series, got shape {x.shape}")
    return x


def split_replicas(x, starts) -> list[np.ndarray]:
    """Cut one series into its replicas: ``x: [n]``, ``starts: [R]`` the first row of each
    (non-decreasing, ``starts[0] = 0``, e.g. ``SampleSet.chain_starts``). Returns the non-empty
    pieces ``[N_r]`` as float64 (an empty chain, e.g. of a rank that wrote nothing, is left out).
    """
    x = _series(x)
    starts = np.asarray(starts, dtype=np.int64).reshape(-1)
    if starts.size == 0 or starts[0] != 0 or np.any(np.diff(starts) < 0) or starts[-1] > x.size:
        raise ValueError(f"replica starts must be non-decreasing from 0 to at most {x.size}, "
                         f"got {starts.tolist()}")
    return [piece for piece in np.split(x, starts[1:]) if piece.size]


def _is_series_list(x) -> bool:
    """Whether ``x`` is a list (or tuple) of 1-D series rather than one series."""
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(np.ndim(e) == 1 for e in x)


def _replica_list(x, replicas) -> list[np.ndarray]:
    """The replicas ``[N_r]`` (float64, non-empty) of ``x``: one series ``[n]`` (one replica, or
    cut at the rows ``replicas`` by :func:`split_replicas`) or a list of series."""
    if replicas is not None:
        return split_replicas(x, replicas)
    if _is_series_list(x):
        return [r for r in (_series(e) for e in x) if r.size]
    x = _series(x)
    return [x] if x.size else []


def _lagged_products(d: np.ndarray) -> np.ndarray:
    """``sum_{i=1}^{n-t} d_i d_{i+t}`` for t = 0..n-1 (``d: [n]``), by FFT (zero-padded: no
    wrap-around)."""
    n = d.size
    nfft = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(d, nfft)
    return np.fft.irfft(f * np.conj(f), nfft)[:n]


def _replica_autocovariance(xs: list[np.ndarray]) -> np.ndarray:
    """``Gamma(t)`` of replicas ``xs: R x [N_r]`` about their common mean, t = 0..max N_r - 1:
    the lagged products summed over replicas, divided by ``sum_r max(N_r - t, 0)`` (Wolff
    2004: ``N - R t``). A lag longer than a replica gets nothing from it, so the window may
    exceed half the shortest replica (Wolff's UWerr stops there). One replica: ``1/(n - t)
    sum_i (x_i - xbar)(x_{i+t} - xbar)``."""
    mean = np.concatenate(xs).mean()
    lags = max(x.size for x in xs)
    total = np.zeros(lags)
    norm = np.zeros(lags, dtype=np.int64)
    for x in xs:
        total[: x.size] += _lagged_products(x - mean)
        norm[: x.size] += np.arange(x.size, 0, -1)
    return total / norm


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """``Gamma(t)`` of one series ``x: [n]``, t = 0..n-1, normalized by ``n - t``."""
    return _replica_autocovariance([x])


def autocorrelation(x, max_lag: int | None = None) -> np.ndarray:
    """Normalized autocorrelation ``rho(t) = Gamma(t) / Gamma(0)`` for ``t = 0..max_lag``.

    ``x: [n]``; returns ``[min(max_lag, n-1) + 1]``. ``Gamma(t)`` is normalized by ``n - t``
    (Wolff 2004); a constant series gives ``rho = (1, 0, 0, ...)``.
    """
    x = _series(x)
    if x.size == 0:
        raise ValueError("empty series")
    gamma = _autocovariance(x)
    if max_lag is not None:
        gamma = gamma[: max_lag + 1]
    if gamma[0] == 0:
        rho = np.zeros_like(gamma)
        rho[0] = 1.0
        return rho
    return gamma / gamma[0]


def _windowed(gamma: np.ndarray, n: int, c: float) -> tuple[float, float, int, float]:
    """``(tau, d tau, W, C)`` from ``Gamma(t): [T]`` (t = 0..T-1) of ``n`` samples in all (one
    series, or all replicas with ``T`` the longest), with ``C = 2 tau Gamma(0)`` = n * variance
    of the mean, after the window search ``W <= T/2`` and Wolff's correction of the bias that
    subtracting the sample mean causes."""
    if gamma[0] <= 0:  # constant series: no fluctuations, no error
        return 0.5, 0.0, 0, 0.0
    w_max = max(1, gamma.size // 2)
    tau_w = 0.5 + np.cumsum(gamma[1 : w_max + 1]) / gamma[0]  # tau(W) for W = 1..w_max
    ok = np.flatnonzero(np.arange(1, tau_w.size + 1) >= c * tau_w)
    if ok.size:
        window = int(ok[0]) + 1
    elif tau_w.size == 0:  # replicas of one sample each: independent, no lag to sum
        window = 0
    else:
        window = tau_w.size
        warnings.warn(
            f"series of {n} samples is too short to estimate tau_int (no window W <= {w_max} "
            f"with W >= {c} tau(W)); tau_int ~ {tau_w[-1]:.3g} is a lower bound",
            RuntimeWarning, stacklevel=3,
        )
    g = gamma[: window + 1]
    big_c = g[0] + 2.0 * g[1:].sum()
    # Subtracting the sample mean biases every Gamma(t) by about -C/n (Wolff 2004).
    g = g + big_c / n
    big_c = g[0] + 2.0 * g[1:].sum()
    tau = big_c / (2.0 * g[0])
    dtau = tau * math.sqrt(2.0 * (2 * window + 1) / n)
    return float(tau), float(dtau), window, float(big_c)


def _replica_q_value(xs: list[np.ndarray], mean: float, big_c: float) -> float | None:
    """Wolff's replica check (2004; the Q-value of his UWerr): ``Q = P(chi^2_{R-1} >= chi^2)`` with
    ``chi^2 = sum_r N_r (xbar_r - xbar)^2 / C``; ``None`` for one replica."""
    if len(xs) < 2:
        return None
    chi2 = float(sum(x.size * (x.mean() - mean) ** 2 for x in xs))
    if big_c <= 0:
        return 1.0 if chi2 == 0 else 0.0
    from scipy.special import gammaincc

    return float(gammaincc(0.5 * (len(xs) - 1), 0.5 * chi2 / big_c))


def integrated_autocorrelation_time(x, c: float = 5.0, replicas=None) -> TauInt:
    """``tau_int`` with automatic windowing: the smallest ``W`` with ``W >= c tau(W)``.

    ``x: [n]``, or replicas (a list of series ``[N_r]``, or ``x`` cut at the rows ``replicas``,
    see :func:`split_replicas`). ``tau(W) = 1/2 + sum_{t=1}^{W} rho(t)``; error
    ``tau sqrt(2 (2W+1)/N)`` (Madras & Sokal 1988), ``N`` all samples. ``c`` between 4 and 10:
    larger is safer against slow modes, noisier. Uncorrelated data give ``tau ~ 1/2``; AR(1) with
    coefficient ``r`` gives ``(1 + r) / (2 (1 - r))``. Warns (RuntimeWarning) when no such window
    exists below half the longest replica. Non-finite data give ``nan``.
    """
    xs = _replica_list(x, replicas)
    n = sum(r.size for r in xs)
    if n < 2:
        raise ValueError(f"need at least 2 samples, got {n}")
    if not all(np.all(np.isfinite(r)) for r in xs):
        return TauInt(math.nan, math.nan, 0)
    tau, dtau, window, _ = _windowed(_replica_autocovariance(xs), n, c)
    return TauInt(tau, dtau, window)


def chain_mean(x, c: float = 5.0, replicas=None) -> ChainEstimate:
    """Mean of a Markov-chain series with the error ``sqrt(2 tau_int Gamma(0) / n)``.

    ``x: [n]`` one chain; or replicas, independent chains of the same process: a list of series
    ``[N_r]``, or ``x`` with ``replicas: [R]`` the row where each starts (``split_replicas``).
    Replicas give the mean of all ``N`` samples and the Gamma method with replicas (Wolff
    2004): ``Gamma(t)`` summed over them, ``n = N``, and ``q_value`` (module docstring). One
    replica is exactly the single-series estimate. Anticorrelation (``tau_int < 1/2``) is not
    credited: the error is never below the naive one for independent samples. Non-finite data
    give ``nan``.
    """
    xs = _replica_list(x, replicas)
    n = sum(r.size for r in xs)
    if n == 0:
        return ChainEstimate(math.nan, math.nan, None, 0, replicas=0)
    mean = float(np.concatenate(xs).mean())
    if n < 2 or not all(np.all(np.isfinite(r)) for r in xs):
        return ChainEstimate(mean, math.nan, None, n, replicas=len(xs))
    tau, dtau, window, big_c = _windowed(_replica_autocovariance(xs), n, c)
    if tau < 0.5:
        big_c *= 0.5 / tau
        tau = 0.5
    return ChainEstimate(mean, math.sqrt(big_c / n), tau, n, tau_error=dtau, window=window,
                         replicas=len(xs), q_value=_replica_q_value(xs, mean, big_c))


def acceptance_rate(accepted, replicas=None) -> ChainEstimate:
    """Fraction of accepted proposals, with an error that accounts for the correlation of
    consecutive accept/reject decisions. ``accepted: [n]`` bool, or replicas as in
    :func:`chain_mean` (a list of ``[N_r]``, or ``replicas`` the first row of each)."""
    if not (_is_series_list(accepted) and replicas is None):
        accepted = np.asarray(accepted, dtype=np.float64).reshape(-1)
    return chain_mean(accepted, replicas=replicas)


# ------------------------------------------------------------------------- binning, jackknife
def binned_error(x, bin_size: int) -> float:
    """Error of the mean from the spread of bin averages: ``std(bins, ddof=1) / sqrt(n_bins)``.

    ``x: [n]``, or ``[n, C]`` for ``C`` independent chains (each cut on its own), in
    ``n // bin_size`` consecutive bins per chain (the remainder at the end is dropped). For bins
    much longer than ``tau_int`` this tends to ``sqrt(2 tau_int Gamma(0) / n)``; short bins
    underestimate it.
    """
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(len(x), -1) if x.ndim > 1 else x[:, None]
    n_per_chain = x.shape[0] // bin_size if bin_size >= 1 else 0
    if n_per_chain * x.shape[1] < 2:
        raise ValueError(f"need at least 2 bins of {bin_size}, have {x.shape[0]} samples "
                         f"in each of {x.shape[1]} chains")
    means = x[: n_per_chain * bin_size].reshape(n_per_chain, bin_size, -1).mean(axis=1).ravel()
    return float(means.std(ddof=1) / math.sqrt(means.size))


def auto_binned_error(x, min_bins: int = 32) -> tuple[float, int]:
    """Binned error at the start of its plateau: ``(error, bin_size)``.

    Tries bin sizes ``1, 2, 4, ...`` that leave at least ``min_bins`` bins and takes the smallest
    one whose error is not significantly below that of any larger bin size: below by more than
    the larger one's own relative uncertainty ``1/sqrt(2 (n_bins - 1))``. A heuristic; for a
    chain much shorter than ``min_bins * tau_int`` no plateau exists and the error is low.
    """
    x = _series(x)
    sizes = []
    b = 1
    while x.size // b >= min_bins:
        sizes.append(b)
        b *= 2
    if not sizes:
        if x.size < 2:
            raise ValueError(f"need at least 2 samples, got {x.size}")
        warnings.warn(f"{x.size} samples < min_bins = {min_bins}: no binning possible",
                      RuntimeWarning, stacklevel=2)
        return binned_error(x, 1), 1
    errs = np.array([binned_error(x, s) for s in sizes])
    rel = np.array([1.0 / math.sqrt(2.0 * (x.size // s - 1)) for s in sizes])
    for i in range(len(sizes)):
        if np.all(errs[i] >= errs[i + 1 :] * (1.0 - rel[i + 1 :])):
            return float(errs[i]), sizes[i]
    return float(errs[-1]), sizes[-1]  # not reached: the last size always qualifies


def _auto_blocks(arrays: list[np.ndarray], c: float = 5.0, max_blocks: int = 100) -> int:
    """Number of jackknife blocks with blocks at least ``20 tau_int`` long (the largest tau_int
    among the arrays, each reduced to one number per row), at most ``max_blocks``."""
    n = arrays[0].shape[0]
    tau = 0.5
    for a in arrays:
        s = a.reshape(n, -1).astype(np.float64).mean(axis=1) if a.ndim > 1 else a
        s = np.asarray(s, dtype=np.float64)
        if n >= 2 and np.all(np.isfinite(s)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                tau = max(tau, _windowed(_autocovariance(s), n, c)[0])
    n_blocks = min(max_blocks, n // math.ceil(20.0 * tau))
    if n_blocks < 10:
        warnings.warn(
            f"only {max(n_blocks, 2)} jackknife blocks of >= 20 tau_int ({tau:.3g}) in {n} "
            "samples: the error is itself uncertain", RuntimeWarning, stacklevel=3,
        )
    return max(n_blocks, 2)


def jackknife(fn: Callable[..., Any], *arrays, n_blocks: int | None = None):
    """Block-jackknife estimate and error of a derived quantity ``fn(*arrays)``.

    ``arrays``: equal-length arrays ``[n, ...]``, cut along axis 0 into ``K = n_blocks``
    consecutive blocks; ``theta_k = fn(arrays without block k)``; the error is
    ``sqrt((K - 1)/K sum_k (theta_k - mean_k theta_k)^2)`` (B. Efron,
    "The Jackknife, the Bootstrap and Other Resampling Plans", 1982). Blocks much longer than
    ``tau_int`` make it valid for autocorrelated data: by default each block is at least
    ``20 tau_int`` long (and ``K <= 100``). ``fn`` may return a scalar or an array.

    Returns ``(fn(*arrays), error)`` (the estimate on all data, not bias-corrected).
    """
    if not arrays:
        raise ValueError("jackknife needs at least one array")
    arrays = [np.asarray(a) for a in arrays]
    n = arrays[0].shape[0]
    if any(a.shape[0] != n for a in arrays):
        raise ValueError(f"arrays of different lengths {[a.shape[0] for a in arrays]}")
    if n_blocks is None:
        n_blocks = _auto_blocks(arrays)
    if not 2 <= n_blocks <= n:
        raise ValueError(f"n_blocks must be in 2..{n}, got {n_blocks}")
    estimate = np.asarray(fn(*arrays), dtype=np.float64)
    edges = np.linspace(0, n, n_blocks + 1).round().astype(np.int64)
    thetas = np.stack([
        np.asarray(fn(*(np.concatenate([a[:lo], a[hi:]]) for a in arrays)), dtype=np.float64)
        for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ])
    k = n_blocks
    error = np.sqrt((k - 1) / k * ((thetas - thetas.mean(axis=0)) ** 2).sum(axis=0))
    if estimate.ndim == 0:
        return float(estimate), float(error)
    return estimate, error


# ------------------------------------------------------------------------ importance sampling
def logsumexp(a) -> float:
    """``log sum exp(a)`` without overflow; ``-inf`` for an empty or all ``-inf`` input."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.size == 0:
        return -math.inf
    m = np.max(a)
    if not np.isfinite(m):
        return float(m) if not np.isnan(m) else math.nan  # +inf, -inf (all zero) or nan
    return float(m + np.log(np.sum(np.exp(a - m))))


def _log_weights(log_weight) -> np.ndarray:
    lw = _series(log_weight)
    if lw.size == 0:
        raise ValueError("no weights")
    return lw


def ess(log_weight) -> float:
    """Effective sample size per sample ``(sum w)^2 / (n sum w^2)``, from ``log w: [n]``:
    ``exp(2 logsumexp(lw) - logsumexp(2 lw) - log n)``. 1 for equal weights, ``~1/n`` when one
    weight dominates; ``nan`` when no weight is positive or any is ``nan``."""
    lw = _log_weights(log_weight)
    a, b = logsumexp(lw), logsumexp(2.0 * lw)
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.nan
    return min(1.0, math.exp(2.0 * a - b - math.log(lw.size)))


def log_weight_variance(log_weight) -> float:
    """Sample variance of ``log w: [n]`` (for annealing and stochastic flows ``var W``, whose
    ``c / n`` law picks the protocol length; README, "Which sampler"). ``inf`` when a weight is
    zero (``log w = -inf``), ``nan`` for one sample or a ``nan`` weight."""
    lw = _log_weights(log_weight)
    if np.isneginf(lw).any():
        return math.inf
    with np.errstate(invalid="ignore", over="ignore"):  # +inf or nan weights: nan, quietly
        return float(lw.var(ddof=1)) if lw.size > 1 else math.nan


def log_z_estimate(log_weight, method: str = "delta", n_blocks: int | None = None) -> Estimate:
    """``log Z ~ log((1/n) sum w)`` from ``log w: [n]`` (docs/physics.md, "Training and sampling").

    ``method="delta"`` (independent proposals): the delta method gives
    ``Var(log mean w) ~ Var(w) / (n E[w]^2)``, i.e. error ``sqrt((1/ESS - 1) / (n - 1))``;
    ``method="jackknife"``: block jackknife of ``log mean w`` (correlated samples). Both trust the
    sample variance of ``w``: with heavy-tailed weights (small ESS) the error is underestimated.
    The estimator is biased low by about ``(1/ESS - 1) / (2n)`` (Jensen's inequality).
    """
    lw = _log_weights(log_weight)
    n = lw.size
    value = logsumexp(lw) - math.log(n)
    if n < 2 or not math.isfinite(value):
        return Estimate(value, math.nan, None, n)
    if method == "delta":
        e = ess(lw)
        error = math.sqrt(max(1.0 / e - 1.0, 0.0) / (n - 1))
    elif method == "jackknife":
        _, error = jackknife(lambda x: logsumexp(x) - math.log(x.size), lw, n_blocks=n_blocks)
    else:
        raise ValueError(f"method must be 'delta' or 'jackknife', got {method!r}")
    return Estimate(value, error, None, n)


def _weighted_mean(obs: np.ndarray, lw: np.ndarray) -> float:
    w = np.exp(lw - lw.max())  # shift inside: a left-out block may hold the largest weight
    return float(np.dot(w, obs) / w.sum())


def reweighted_mean(obs, log_weight, n_blocks: int | None = None) -> Estimate:
    """Self-normalized importance-sampling estimate ``sum w O / sum w`` with a block-jackknife
    error (the ratio of two correlated means). ``obs, log_weight: [n]``.

    The default blocks follow the autocorrelation of ``w O`` and ``w`` (see :func:`jackknife`);
    for independent proposals any ``n_blocks`` of tens to hundreds is fine.
    """
    obs = _series(obs)
    lw = _log_weights(log_weight)
    if obs.size != lw.size:
        raise ValueError(f"obs has {obs.size} rows, log_weight {lw.size}")
    n = lw.size
    if n < 2 or not (np.all(np.isfinite(obs)) and np.all(lw < np.inf) and not np.isnan(lw).any()):
        value = _weighted_mean(obs, lw) if n else math.nan
        return Estimate(value, math.nan, None, n)
    if n_blocks is None:
        w = np.exp(lw - lw.max())
        n_blocks = _auto_blocks([w * obs, w])
    value, error = jackknife(_weighted_mean, obs, lw, n_blocks=n_blocks)
    return Estimate(value, error, None, n)


def independence_metropolis(log_weight: np.ndarray, uniforms: np.ndarray, *,
                            state_log_weight: float | None = None, state_index: int = -1):
    """Run the independence Metropolis chain through proposals in order.

    log_weight: ``[n]`` float64 log weights of the proposals (``-S - log q`` for a flow, ``-W``
    for a non-equilibrium trajectory); uniforms: ``[n]`` in ``[0, 1)``. ``state_log_weight`` /
    ``state_index``: the chain state before the first proposal (to continue a chain); with
    ``None`` the first proposal starts the chain and is accepted.
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
