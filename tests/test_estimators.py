"""Estimators: tau_int of AR(1) processes, error coverage over many seeds, the Gamma method with
replicas (unequal lengths, one replica = one series, the replica Q-value), jackknife against the
delta method, ESS and log Z of known weights, stability with log weights of order 1e4."""

import math
import warnings

import numpy as np
import pytest

from hpcflow.estimators import (
    ChainEstimate,
    Estimate,
    _replica_autocovariance,
    acceptance_rate,
    auto_binned_error,
    autocorrelation,
    binned_error,
    chain_mean,
    ess,
    format_value_error,
    integrated_autocorrelation_time,
    jackknife,
    log_weight_variance,
    log_z_estimate,
    logsumexp,
    reweighted_mean,
    split_replicas,
)
from tests.helpers import ar1, sigma_mean_replicas, tau_true

N_SEEDS = 200


def sigma_mean_true(rho, n):
    """Asymptotic error of the mean of an AR(1) chain of length n."""
    return math.sqrt(2 * tau_true(rho) / (1 - rho**2) / n)


def ar1_replicas(rho, lengths, rng):
    """Independent stationary AR(1) chains of the given lengths."""
    return [ar1(rho, m, rng) for m in lengths]


# ------------------------------------------------------------------------- autocorrelation
@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_tau_int_of_ar1_within_10_percent(rho):
    x = ar1(rho, 2**17, np.random.default_rng(11))
    tau, err, window = integrated_autocorrelation_time(x)
    assert abs(tau / tau_true(rho) - 1) < 0.10
    # the quoted error is the Madras-Sokal one and the window is self-consistent
    assert err == pytest.approx(tau * math.sqrt(2 * (2 * window + 1) / x.size))
    assert window >= 5 * tau - 1


def test_autocorrelation_of_ar1_is_geometric():
    rho = 0.7
    r = autocorrelation(ar1(rho, 2**16, np.random.default_rng(3)), max_lag=5)
    assert r.shape == (6,) and r[0] == 1.0
    np.testing.assert_allclose(r, rho ** np.arange(6), atol=0.02)


def test_autocorrelation_matches_direct_sum():
    x = np.random.default_rng(0).normal(size=50)
    d = x - x.mean()
    direct = np.array([d[: 50 - t] @ d[t:] / (50 - t) for t in range(50)])
    np.testing.assert_allclose(autocorrelation(x), direct / direct[0], atol=1e-12)


def test_iid_data_give_tau_one_half():
    x = np.random.default_rng(5).normal(size=2**16)
    tau, err, window = integrated_autocorrelation_time(x)
    assert abs(tau - 0.5) < 0.03 and err < 0.01 and window <= 4


def test_constant_series_has_zero_error():
    e = chain_mean(np.full(100, 3.0))
    assert (e.value, e.error, e.tau_int) == (3.0, 0.0, 0.5)
    np.testing.assert_array_equal(autocorrelation(np.ones(4)), [1, 0, 0, 0])


def test_too_short_chain_warns():
    x = np.cumsum(np.random.default_rng(1).normal(size=200))  # random walk: no finite tau
    with pytest.warns(RuntimeWarning, match="too short"):
        integrated_autocorrelation_time(x)


# ------------------------------------------------------------------------------ coverage
@pytest.mark.parametrize("rho, n", [(0.0, 1000), (0.8, 4096)])
def test_chain_mean_errors_cover_the_true_mean(rho, n):
    """Over 200 independent chains, |mean - 0| < error about 68% of the time."""
    xs = ar1(rho, n, np.random.default_rng(2024), size=(N_SEEDS,))
    est = [chain_mean(x) for x in xs]
    coverage = np.mean([abs(e.value) < e.error for e in est])
    assert 0.6 <= coverage <= 0.8
    mean_error = np.mean([e.error for e in est])
    assert mean_error == pytest.approx(sigma_mean_true(rho, n), rel=0.1)
    assert np.mean([e.tau_int for e in est]) == pytest.approx(tau_true(rho), rel=0.15)


# ------------------------------------------------------------------------------ replicas
def _chain_mean_before_replicas(x, c=5.0):
    """``chain_mean`` as it was before replicas (one series), kept verbatim as the reference."""
    n = x.size
    mean = float(x.mean())
    d = x - x.mean()
    nfft = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(d, nfft)
    gamma = np.fft.irfft(f * np.conj(f), nfft)[:n] / np.arange(n, 0, -1)
    if gamma[0] <= 0:
        return mean, 0.0, 0.5, n
    w_max = max(1, n // 2)
    tau_w = 0.5 + np.cumsum(gamma[1 : w_max + 1]) / gamma[0]
    ok = np.flatnonzero(np.arange(1, tau_w.size + 1) >= c * tau_w)
    window = int(ok[0]) + 1 if ok.size else tau_w.size
    g = gamma[: window + 1]
    big_c = g[0] + 2.0 * g[1:].sum()
    g = g + big_c / n
    big_c = g[0] + 2.0 * g[1:].sum()
    tau = big_c / (2.0 * g[0])
    if tau < 0.5:
        big_c *= 0.5 / tau
        tau = 0.5
    return mean, math.sqrt(big_c / n), tau, n


@pytest.mark.parametrize("make", [
    lambda rng: ar1(0.9, 5000, rng),
    lambda rng: rng.normal(size=777),
    lambda rng: ar1(-0.5, 64, rng),  # anticorrelated: tau < 1/2 not credited
    lambda rng: np.array([1.0, 2.0]),
    lambda rng: np.full(10, 2.5),
])
def test_one_replica_is_exactly_the_single_series_estimate(make):
    x = make(np.random.default_rng(17))
    old = _chain_mean_before_replicas(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for e in (chain_mean(x), chain_mean([x]), chain_mean(x, replicas=[0]),
                  chain_mean((x,)), chain_mean(x, replicas=[0, x.size])):
            assert (e.value, e.error, e.tau_int, e.n) == old
            assert e.replicas == 1 and e.q_value is None
        assert integrated_autocorrelation_time([x]) == integrated_autocorrelation_time(x)


def test_replica_autocovariance_is_the_direct_sum():
    """``Gamma(t) = sum_r sum_i d^r_i d^r_{i+t} / sum_r (N_r - t)_+`` about the global mean."""
    rng = np.random.default_rng(2)
    xs = [rng.normal(size=m) + 0.3 * r for r, m in enumerate((9, 5, 7))]
    mean = np.concatenate(xs).mean()
    direct = []
    for t in range(9):
        num = sum(float((x[: x.size - t] - mean) @ (x[t:] - mean)) for x in xs if x.size > t)
        direct.append(num / sum(max(x.size - t, 0) for x in xs))
    np.testing.assert_allclose(_replica_autocovariance(xs), direct, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("lengths", [(20000, 12000), (9000, 4000, 12000, 7000)])
def test_replicas_of_ar1_give_tau_and_error_within_their_errors(lengths):
    """Replicas of unequal length: tau_int within 3 of its stated errors of the exact one, the
    error of the mean within 3 of its own errors (Wolff: ``sigma sqrt((W + 1/2)/N)``), the
    mean within 4 sigma of 0, for each of several seeds."""
    rho = 0.8
    n = sum(lengths)
    sigma = sigma_mean_replicas(rho, lengths)
    for seed in range(6):
        xs = ar1_replicas(rho, lengths, np.random.default_rng([len(lengths), seed]))
        e = chain_mean(xs)
        assert isinstance(e, ChainEstimate)
        assert e.replicas == len(lengths) and e.n == n
        assert e.value == pytest.approx(np.concatenate(xs).mean(), rel=1e-12)
        assert abs(e.tau_int - tau_true(rho)) < 3 * e.tau_error
        assert abs(e.error / sigma - 1) < 3 * math.sqrt((e.window + 0.5) / n)
        assert abs(e.value) < 4 * e.error
        assert integrated_autocorrelation_time(xs) == (e.tau_int, e.tau_error, e.window)


def test_replica_errors_cover_the_true_mean():
    """Over 200 sets of 4 unequal AR(1) replicas: |mean| < error about 68% of the time, the
    mean error is the exact one, and the replica Q-values are uniform."""
    rho, lengths = 0.8, (1200, 700, 1500, 900)
    rng = np.random.default_rng(2025)
    est = [chain_mean(ar1_replicas(rho, lengths, rng)) for _ in range(N_SEEDS)]
    coverage = np.mean([abs(e.value) < e.error for e in est])
    assert 0.6 <= coverage <= 0.8
    mean_error = np.mean([e.error for e in est])
    assert mean_error == pytest.approx(sigma_mean_replicas(rho, lengths), rel=0.1)
    assert np.mean([e.tau_int for e in est]) == pytest.approx(tau_true(rho), rel=0.15)
    q = np.array([e.q_value for e in est])
    assert abs(q.mean() - 0.5) < 0.1  # uniform: mean 1/2, about 5% below 0.05
    assert np.mean(q < 0.05) < 0.12


def test_replicas_that_disagree_are_flagged():
    """Two chains shifted by + 4 sigma of their own means and two by - 4: chi^2 ~ 64 + 3,
    Q ~ 1e-13 (flagged); unshifted: Q not small."""
    rho, lengths = 0.8, (4000, 4000, 4000, 4000)
    xs = ar1_replicas(rho, lengths, np.random.default_rng(5))
    good = chain_mean(xs)
    shift = 4.0 * sigma_mean_replicas(rho, lengths[:1])
    bad = chain_mean([xs[0] + shift, xs[1] + shift, xs[2] - shift, xs[3] - shift])
    assert good.q_value > 0.01 and bad.q_value < 1e-6
    assert bad.value == pytest.approx(good.value) and bad.error > good.error
    # a single long series split into its pieces is fine as well
    assert chain_mean(ar1(rho, 16000, np.random.default_rng(6)), replicas=[0, 4000]).q_value > 0.01


def test_split_replicas_and_short_replicas():
    x = np.arange(10.0)
    pieces = split_replicas(x, [0, 3, 3, 10])  # the empty chain of a rank with no rows is dropped
    assert [p.tolist() for p in pieces] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]]
    for bad in ([1, 3], [0, 5, 4], [0, 11], []):
        with pytest.raises(ValueError):
            split_replicas(x, bad)
    # replicas of one sample each are independent samples: tau 1/2
    e = chain_mean([np.array([1.0]), np.array([2.0]), np.array([4.0])])
    assert e.tau_int == 0.5 and e.n == 3 and e.replicas == 3 and e.error > 0
    # a replica shorter than the window only adds to the lags it has
    rng = np.random.default_rng(8)
    e = chain_mean([ar1(0.8, 20000, rng), ar1(0.8, 10, rng)])
    assert e.replicas == 2 and abs(e.tau_int - tau_true(0.8)) < 3 * e.tau_error
    assert chain_mean([]).n == 0 and chain_mean([np.zeros(0)]).replicas == 0


def test_acceptance_rate_of_replicas():
    rng = np.random.default_rng(0)
    chains = [rng.random(m) < 0.3 for m in (4000, 6000)]
    e = acceptance_rate(chains)
    assert e.value == pytest.approx(np.concatenate(chains).mean()) and e.replicas == 2
    assert acceptance_rate(np.concatenate(chains), replicas=[0, 4000]) == e
    assert acceptance_rate([True, False, True, True]).value == 0.75  # a list of flags: one chain


def test_binned_errors_reach_the_true_error():
    rho, n = 0.8, 4096
    xs = ar1(rho, n, np.random.default_rng(7), size=(N_SEEDS,))
    res = [auto_binned_error(x) for x in xs]
    errors = np.array([e for e, _ in res])
    coverage = np.mean(np.abs(xs.mean(axis=1)) < errors)
    assert 0.6 <= coverage <= 0.8
    assert errors.mean() == pytest.approx(sigma_mean_true(rho, n), rel=0.1)
    assert min(b for _, b in res) >= 8  # bins of one or two tau_int would be too short
    # unbinned errors of correlated data are too small by sqrt(2 tau_int) = 3
    assert np.mean([binned_error(x, 1) for x in xs]) < errors.mean() / 2.5


def test_binned_error_of_single_samples_is_the_naive_error():
    x = np.random.default_rng(0).normal(size=1000)
    assert binned_error(x, 1) == pytest.approx(x.std(ddof=1) / math.sqrt(1000))
    with pytest.raises(ValueError):
        binned_error(x, 600)


def test_jackknife_of_correlated_mean_covers():
    rho, n = 0.8, 4096
    xs = ar1(rho, n, np.random.default_rng(8), size=(N_SEEDS,))
    res = [jackknife(np.mean, x) for x in xs]
    coverage = np.mean([abs(v) < e for v, e in res])
    assert 0.6 <= coverage <= 0.8
    # the estimate is fn on all data
    assert res[0][0] == pytest.approx(xs[0].mean())


# ------------------------------------------------------------------------------ jackknife
def test_jackknife_of_a_ratio_agrees_with_the_delta_method():
    rng = np.random.default_rng(4)
    n = 20000
    y = rng.normal(5.0, 1.0, size=n)
    x = 2.0 + 0.5 * y + rng.normal(0.0, 1.0, size=n)  # correlated numerator and denominator
    ratio, err = jackknife(lambda a, b: a.mean() / b.mean(), x, y, n_blocks=100)
    mx, my = x.mean(), y.mean()
    c = np.cov(x, y)
    delta = math.sqrt((c[0, 0] / my**2 - 2 * mx * c[0, 1] / my**3 + mx**2 * c[1, 1] / my**4) / n)
    assert ratio == pytest.approx(mx / my)
    assert err == pytest.approx(delta, rel=0.15)


def test_jackknife_of_a_vector_valued_function():
    x = np.random.default_rng(1).normal(size=(4000, 3))
    est, err = jackknife(lambda a: a.mean(axis=0), x, n_blocks=40)
    assert est.shape == err.shape == (3,)
    np.testing.assert_allclose(err, x.std(axis=0) / math.sqrt(4000), rtol=0.3)


def test_jackknife_refuses_bad_input():
    with pytest.raises(ValueError):
        jackknife(np.mean, np.ones(10), np.ones(9))
    with pytest.raises(ValueError):
        jackknife(np.mean, np.ones(10), n_blocks=11)


# ---------------------------------------------------------------------- importance sampling
def test_ess_of_equal_and_dominated_weights():
    n = 1000
    assert ess(np.zeros(n)) == pytest.approx(1.0, abs=1e-12)
    assert ess(np.full(n, -3.7)) == pytest.approx(1.0, abs=1e-12)
    lw = np.zeros(n)
    lw[17] = 1000.0
    assert ess(lw) == pytest.approx(1.0 / n, rel=1e-9)
    # two equal weights out of n: 2/n
    lw[18] = 1000.0
    assert ess(lw) == pytest.approx(2.0 / n, rel=1e-9)


def test_log_weight_variance_and_its_edge_cases():
    lw = np.random.default_rng(3).normal(-40.0, 1.3, size=500)
    assert log_weight_variance(lw) == pytest.approx(np.var(lw, ddof=1), rel=1e-12)
    lw[7] = -np.inf  # a zero weight
    assert log_weight_variance(lw) == math.inf
    assert math.isnan(log_weight_variance(np.array([0.5])))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy warning reaches the user
        assert math.isnan(log_weight_variance(np.array([0.0, np.inf, 1.0])))
        assert math.isnan(log_weight_variance(np.array([0.0, np.nan, 1.0])))
    with pytest.raises(ValueError, match="no weights"):
        log_weight_variance(np.array([]))


def test_ess_matches_the_direct_formula():
    lw = np.random.default_rng(0).normal(size=500)
    w = np.exp(lw)
    assert ess(lw) == pytest.approx(w.sum() ** 2 / (500 * (w**2).sum()), rel=1e-12)


def test_log_z_of_log_normal_weights():
    """log w ~ N(mu, s^2): E[w] = exp(mu + s^2/2), Var(w)/E[w]^2 = exp(s^2) - 1."""
    mu, s, n = -2.0, 0.5, 1000
    log_z = mu + s**2 / 2
    expected_error = math.sqrt(math.expm1(s**2) / n)
    rng = np.random.default_rng(9)
    ests = [log_z_estimate(rng.normal(mu, s, size=n)) for _ in range(N_SEEDS)]
    coverage = np.mean([abs(e.value - log_z) < e.error for e in ests])
    assert 0.6 <= coverage <= 0.8
    assert np.mean([e.error for e in ests]) == pytest.approx(expected_error, rel=0.05)
    assert np.mean([e.value for e in ests]) == pytest.approx(log_z, abs=3 * expected_error / 14)

    lw = rng.normal(mu, s, size=n)
    delta, jack = log_z_estimate(lw), log_z_estimate(lw, method="jackknife", n_blocks=100)
    assert jack.value == delta.value
    assert jack.error == pytest.approx(delta.error, rel=0.2)


def test_reweighted_mean_recovers_a_shifted_gaussian():
    """Proposals x ~ N(0, 1), target N(m, 1): log w = m x - m^2/2, <x>_target = m."""
    m, n = 0.5, 2000
    rng = np.random.default_rng(12)
    ests = []
    for _ in range(N_SEEDS):
        x = rng.normal(size=n)
        ests.append(reweighted_mean(x, m * x - m**2 / 2))
    coverage = np.mean([abs(e.value - m) < e.error for e in ests])
    assert 0.6 <= coverage <= 0.8
    # delta method for the self-normalized estimator (E[w] = 1): Var = E[w^2 (x - m)^2] / n,
    # and E[w^2 (x - m)^2] = exp(m^2) E_{N(2m, 1)}[(x - m)^2] = exp(m^2) (1 + m^2)
    expected = math.sqrt((1 + m**2) * math.exp(m**2) / n)
    assert np.mean([e.error for e in ests]) == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("shift", [1e4, -1e4])
def test_log_weight_shifts_of_order_1e4_are_harmless(shift):
    rng = np.random.default_rng(3)
    lw = rng.normal(size=3000) * 2.0
    obs = rng.normal(size=3000) + lw
    with np.errstate(over="raise", invalid="raise", divide="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        base = (ess(lw), log_z_estimate(lw), reweighted_mean(obs, lw, n_blocks=50))
        moved = (ess(lw + shift), log_z_estimate(lw + shift),
                 reweighted_mean(obs, lw + shift, n_blocks=50))
        assert logsumexp(np.array([shift, shift])) == pytest.approx(shift + math.log(2))
    assert moved[0] == pytest.approx(base[0], rel=1e-12)
    assert moved[1].value == pytest.approx(base[1].value + shift, abs=1e-9)
    assert moved[1].error == pytest.approx(base[1].error, rel=1e-9)
    assert moved[2].value == pytest.approx(base[2].value, rel=1e-9)
    assert moved[2].error == pytest.approx(base[2].error, rel=1e-9)


def test_reweighting_with_widely_spread_log_weights():
    """Weights spanning 1e4 in log: the largest dominates; no overflow, no nan."""
    lw = np.linspace(-1e4, 1e4, 101)
    obs = np.arange(101.0)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        e = reweighted_mean(obs, lw, n_blocks=10)
        assert e.value == pytest.approx(100.0)
        assert ess(lw) == pytest.approx(1 / 101)
        assert log_z_estimate(lw).value == pytest.approx(1e4 - math.log(101))


# ------------------------------------------------------------------------- small things
def test_acceptance_rate():
    acc = np.random.default_rng(0).random(10000) < 0.3
    e = acceptance_rate(acc)
    assert e.value == pytest.approx(acc.mean()) and e.n == 10000
    assert e.error == pytest.approx(math.sqrt(0.21 / 10000), rel=0.1)
    assert acceptance_rate(np.ones(10, bool)).value == 1.0


@pytest.mark.parametrize("value, error, text", [
    (0.69781, 0.00123, "0.6978(12)"),
    (0.69781, 0.0999, "0.70(10)"),
    (-1.5, 0.25, "-1.50(25)"),
    (1234.5, 56.0, "1234(56)"),
    (12345.0, 567.0, "12340(570)"),
    (1.2345e-7, 1.2e-10, "1.2345(12)e-07"),
    (3.0, 0.0, "3(0)"),
    (3.0, math.nan, "3(?)"),
])
def test_estimate_prints_value_and_error_digits(value, error, text):
    assert format_value_error(value, error) == text
    assert str(Estimate(value, error)) == text


def test_short_and_non_finite_inputs():
    assert math.isnan(chain_mean([1.0]).error)
    assert math.isnan(chain_mean([1.0, math.nan, 2.0]).value)
    assert math.isnan(ess(np.full(3, -np.inf)))
    assert math.isnan(log_z_estimate([0.0]).error)
