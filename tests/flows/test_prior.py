"""The Haar prior from counter-based random numbers: independence from the batch split (as ranks
draw it), distinct seeds, streams and steps, the distributions of the noise (uniforms,
Gaussians), Haar-ness of the links for U(1), SU(2), SU(3), and the same prior on a GPU."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from hpcflow.flows.prior import (
    PRIOR_TAG,
    STREAM_SAMPLE,
    STREAM_TRAIN,
    haar_prior,
    prior_key,
    prior_noise,
)
from hpcflow.lattice.groups import SUN, Group, get_group
from hpcflow.lattice.random import derive_key, indexed_normal, indexed_uniform

CASES = [("U1", (8, 8)), ("SU2", (4, 3)), ("SU3", (2, 3, 2, 2))]
DTYPES = [torch.complex128, torch.complex64]


pytestmark = pytest.mark.usefixtures("one_thread")


def _sigma_bound(x: torch.Tensor, expect: float, k: float = 5.0) -> bool:
    """``|mean(x) - expect| < k`` standard errors (x real, float64, independent entries)."""
    x = x.double().flatten()
    return abs(x.mean().item() - expect) < k * x.std().item() / math.sqrt(x.numel())


# ------------------------------------------------------------------ keys
def test_prior_key_is_derive_key_with_the_prior_tag():
    """(The hash itself and the indexed Philox layout: tests/lattice/test_random.py.)"""
    assert prior_key(5, 2, 9) == derive_key(5, 2, 9, tag=PRIOR_TAG)
    # arithmetic folds that collide (swapped roles, stream << 32 + step) do not here
    keys = {prior_key(1, 2, 0), prior_key(2, 1, 0), prior_key(1, 0, 2), prior_key(0, 1, 2),
            prior_key(1, 2 << 32, 0), prior_key(1, 2, 1 << 32), prior_key(1, (2 << 32) + 5, 0),
            prior_key(1, 2, 5), derive_key(1, 2, 0, tag=PRIOR_TAG + 1)}
    assert len(keys) == 9
    assert len({prior_key(0, 0, s) for s in range(2000)}) == 2000


# ------------------------------------------------------------------ rank-count independence
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,shape", CASES)
def test_any_split_of_the_batch_gives_the_same_samples(name, shape, dtype):
    """Indices 0..63 drawn at once, or in chunks of 1, 5 or 64 in a shuffled order (as ranks
    and resumed runs draw them): bit-identical noise and links for every index."""
    group = get_group(name)
    kw = {"seed": 11, "stream": STREAM_TRAIN, "step": 3, "dtype": dtype}
    whole_noise = prior_noise(group, shape, range(64), **kw)
    whole = haar_prior(group, shape, range(64), **kw)
    order = np.random.default_rng(0).permutation(64)
    for chunk in (1, 5, 64):
        for lo in range(0, 64, chunk):
            idx = [int(i) for i in order[lo: lo + chunk]]
            assert torch.equal(prior_noise(group, shape, idx, **kw), whole_noise[idx])
            assert torch.allclose(haar_prior(group, shape, idx, **kw), whole[idx],
                                  rtol=0, atol=10 * torch.finfo(whole.real.dtype).eps)
    # the index types callers pass: range slices, lists, numpy arrays, tensors
    assert torch.equal(prior_noise(group, shape, range(64)[10:20:3], **kw),
                       whole_noise[10:20:3])
    assert torch.equal(prior_noise(group, shape, np.arange(5, 9), **kw), whole_noise[5:9])
    assert torch.equal(prior_noise(group, shape, torch.tensor([63, 0]), **kw),
                       whole_noise[[63, 0]])


@pytest.mark.parametrize("name,shape", CASES)
def test_noise_has_the_shape_and_dtype_of_group_noise(name, shape):
    group = get_group(name)
    for dtype in DTYPES:
        old = group.noise((len(shape), *shape), dtype=dtype)
        new = prior_noise(group, shape, [4, 2, 9], seed=0, stream=1, dtype=dtype)
        assert new.shape == (3, *old.shape) and new.dtype == old.dtype
        links = haar_prior(group, shape, [4, 2, 9], seed=0, stream=1, dtype=dtype)
        assert links.shape == (3, len(shape), *shape, group.nc, group.nc)
        assert links.dtype == dtype
    empty = haar_prior(group, shape, [], seed=0, stream=1)
    assert empty.shape == (0, len(shape), *shape, group.nc, group.nc)


def test_bad_indices_and_unknown_groups_are_refused():
    with pytest.raises(ValueError, match="indices"):
        haar_prior(get_group("U1"), (4, 4), [0, -1], seed=0, stream=1)
    with pytest.raises(ValueError, match="indices"):
        haar_prior(get_group("U1"), (4, 4), range(-2, 3), seed=0, stream=1)

    class Other(Group):
        def noise(self, shape, *, generator=None, dtype=torch.complex128, device=None):
            return torch.rand(*shape, device=device)

    with pytest.raises(TypeError, match="noise"):
        haar_prior(Other(), (4, 4), [0], seed=0, stream=1)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().double().numpy(), b.flatten().double().numpy())[0, 1])


def test_seeds_streams_steps_and_indices_draw_unrelated_noise():
    """|corr| < 5 sigma between the noise of draws that differ in one ingredient, including
    shifted pairs (sample i of step s against sample i + 1 of step s + 1)."""
    group, shape = get_group("U1"), (16, 16)
    base = prior_noise(group, shape, range(1, 65), seed=5, stream=STREAM_TRAIN, step=2)
    others = [
        prior_noise(group, shape, range(1, 65), seed=6, stream=STREAM_TRAIN, step=2),
        prior_noise(group, shape, range(1, 65), seed=5, stream=STREAM_SAMPLE, step=2),
        prior_noise(group, shape, range(1, 65), seed=5, stream=STREAM_TRAIN, step=3),
        prior_noise(group, shape, range(2, 66), seed=5, stream=STREAM_TRAIN, step=3),
        prior_noise(group, shape, range(2, 66), seed=5, stream=STREAM_TRAIN, step=2),
        prior_noise(group, shape, range(1, 65), seed=2, stream=STREAM_TRAIN, step=5),
    ]
    bound = 5.0 / math.sqrt(base.numel())
    for other in others:
        assert not torch.equal(other, base)
        assert abs(_corr(base, other)) < bound
    # neighbouring elements within a sample, and neighbouring samples
    flat = base.flatten(1)
    assert abs(_corr(flat[:, :-1], flat[:, 1:])) < bound
    assert abs(_corr(flat[:-1], flat[1:])) < bound


# ------------------------------------------------------------------ distributions of the noise
@pytest.mark.parametrize("dtype", DTYPES)
def test_u1_noise_is_uniform_on_the_open_interval(dtype):
    """Kolmogorov-Smirnov against U(0, 1), never 0 or 1, and against the generator-based
    ``group.noise`` it replaces (two-sample test)."""
    group = get_group("U1")
    u = prior_noise(group, (16, 16), range(1000), seed=3, stream=STREAM_TRAIN, dtype=dtype)
    assert 0.0 < u.min().item() and u.max().item() < 1.0
    x = u.flatten().double().numpy()
    assert stats.kstest(x, "uniform").pvalue > 1e-3
    old = group.noise((200_000,), generator=torch.Generator().manual_seed(0), dtype=dtype)
    assert stats.ks_2samp(x[:200_000], old.double().numpy()).pvalue > 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_sun_noise_is_standard_normal(dtype):
    """Mean 0, variance 1, fourth moment 3, uncorrelated real and imaginary parts, and a
    Kolmogorov-Smirnov test against N(0, 1)."""
    z = prior_noise(get_group("SU3"), (4, 4), range(1000), seed=4, stream=STREAM_TRAIN,
                    dtype=dtype).double()
    assert z.shape == (1000, 2, 4, 4, 3, 3, 2)
    assert _sigma_bound(z, 0.0) and _sigma_bound(z**2, 1.0) and _sigma_bound(z**4, 3.0)
    assert _sigma_bound(z[..., 0] * z[..., 1], 0.0)
    assert stats.kstest(z.flatten().numpy(), "norm").pvalue > 1e-3


# ------------------------------------------------------------------ Haar-ness of the links
def _semicircle_cdf(a):
    """CDF of ``a = tr U / 2`` for Haar SU(2): density ``(2/pi) sqrt(1 - a^2)`` on [-1, 1]."""
    a = np.clip(a, -1.0, 1.0)
    return 0.5 + (a * np.sqrt(1.0 - a * a) + np.arcsin(a)) / math.pi


def _haar_failures(u: torch.Tensor, n: int) -> list[str]:
    """The Haar-measure checks a set of SU(n) matrices ``[M, n, n]`` fails (empty if none).

    Exact Haar values (characters of SU(n)): ``E tr U = 0``, ``E |tr U|^2 = 1``,
    ``E |tr U|^4 = 2`` (the singlets in 3 x 3bar and (3 x 3bar)^2), ``E (tr U)^n = 1`` (the
    epsilon tensor: tells SU(n) from U(n)), ``E (tr U)^2 = 0`` for n = 3, the entries
    ``E U_ij conj(U_kl) = delta_ik delta_jl / n``; and, for SU(2), ``tr U / 2`` on the
    semicircle (Kolmogorov-Smirnov). 5 standard errors each."""
    t = u.diagonal(dim1=-2, dim2=-1).sum(-1)
    checks = {
        "Re E tr U = 0": (t.real, 0.0), "Im E tr U = 0": (t.imag, 0.0),
        "E |tr U|^2 = 1": (t.abs() ** 2, 1.0), "E |tr U|^4 = 2": (t.abs() ** 4, 2.0),
        f"Re E (tr U)^{n} = 1": ((t**n).real, 1.0), f"Im E (tr U)^{n} = 0": ((t**n).imag, 0.0),
    }
    if n == 3:
        checks["Re E (tr U)^2 = 0"] = ((t**2).real, 0.0)
    entries = u.flatten(1)
    second = entries[:, :, None] * entries[:, None, :].conj()  # [M, n^2, n^2]
    eye = torch.eye(n * n, dtype=torch.float64) / n
    for i, j in [(0, 0), (0, 1), (1, 3), (n * n - 1, n * n - 1), (2, n * n - 1)]:
        checks[f"E U_{i} conj U_{j}"] = (second[:, i, j].real, float(eye[i, j]))
    failures = [name for name, (x, expect) in checks.items() if not _sigma_bound(x, expect)]
    if n == 2 and stats.kstest((t.real / 2).numpy(), _semicircle_cdf).pvalue < 1e-3:
        failures.append("tr U / 2 on the semicircle")
    return failures


@pytest.mark.parametrize("n", [2, 3])
def test_sun_links_are_haar(n):
    group = get_group(f"SU{n}")
    u = haar_prior(group, (8, 8), range(200), seed=7, stream=STREAM_SAMPLE)  # 25600 matrices
    u = u.reshape(-1, n, n)
    eye = torch.eye(n, dtype=u.dtype)
    assert torch.allclose(u @ u.mH, eye.expand_as(u), atol=1e-12)
    assert torch.allclose(torch.linalg.det(u), torch.ones(len(u), dtype=u.dtype), atol=1e-12)
    assert _haar_failures(u, n) == []
    # the checks have power: the square of a Haar matrix is not Haar (E |tr U^2|^2 = 2)
    assert "E |tr U|^2 = 1" in _haar_failures(u @ u, n)


def test_u1_links_are_haar():
    """Angles uniform on (-pi, pi] (Kolmogorov-Smirnov), ``E U^k = 0`` for k = 1, 2, 3, and
    the checks fail on a non-uniform set."""
    u = haar_prior(get_group("U1"), (16, 16), range(400), seed=8, stream=STREAM_SAMPLE)[..., 0, 0]
    assert torch.allclose(u.abs(), torch.ones_like(u.real), atol=1e-14)
    theta = torch.angle(u).flatten()
    assert stats.kstest(theta.numpy(), stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue > 1e-3
    for k in (1, 2, 3):
        assert _sigma_bound((u**k).real, 0.0) and _sigma_bound((u**k).imag, 0.0)
    biased = theta * (1 + 0.01 * torch.cos(theta))
    assert stats.kstest(biased.numpy(), stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue < 1e-3


@pytest.mark.parametrize("n", [2, 3])
def test_complex64_links_are_haar_to_single_precision(n):
    u = haar_prior(get_group(f"SU{n}"), (8, 8), range(200), seed=9, stream=STREAM_SAMPLE,
                   dtype=torch.complex64).reshape(-1, n, n)
    assert u.dtype == torch.complex64
    eye = torch.eye(n, dtype=u.dtype)
    assert torch.allclose(u @ u.mH, eye.expand_as(u), atol=1e-5)
    assert _haar_failures(u.to(torch.complex128), n) == []


def test_prior_noise_is_what_haar_prior_transforms():
    group = get_group("SU2")
    kw = {"seed": 1, "stream": 2, "step": 3}
    noise = prior_noise(group, (3, 2), [5, 1], **kw)
    assert isinstance(group, SUN)
    assert torch.equal(group.from_noise(noise), haar_prior(group, (3, 2), [5, 1], **kw))
    assert torch.equal(noise, indexed_normal(prior_key(1, 2, 3), torch.tensor([5, 1]),
                                             (2, 3, 2, 2, 2, 2)))


# ------------------------------------------------------------------ the same numbers on a GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device: the same prior on CPU and GPU")
@pytest.mark.parametrize("dtype", DTYPES)
def test_same_prior_on_cuda(dtype):
    """Identical integers (hence uniforms) on CPU and CUDA, the Gaussians and links equal to
    the rounding of the device's log/cos/sin and QR."""
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    idx = torch.tensor([0, 7, 123456789012, 3])
    key = prior_key(1, 2, 3)
    cpu = indexed_uniform(key, idx, (5000,), dtype=real)
    gpu = indexed_uniform(key, idx.cuda(), (5000,), dtype=real)
    assert gpu.device.type == "cuda" and torch.equal(cpu, gpu.cpu())
    assert torch.allclose(indexed_normal(key, idx, (5000,), dtype=real),
                          indexed_normal(key, idx.cuda(), (5000,), dtype=real).cpu(),
                          rtol=0, atol=100 * torch.finfo(real).eps)
    for name, shape in CASES:
        kw = {"seed": 3, "stream": STREAM_TRAIN, "step": 1, "dtype": dtype}
        a = haar_prior(get_group(name), shape, range(16), **kw)
        b = haar_prior(get_group(name), shape, range(16), device="cuda", **kw)
        assert b.device.type == "cuda"
        assert torch.allclose(a, b.cpu(), rtol=0, atol=1000 * torch.finfo(real).eps)
