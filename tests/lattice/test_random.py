"""Counter-based random numbers (Philox4x32-10): known answers, the bit mapping, uniformity,
independence, that a sample's numbers depend on its key alone, and the indexed layout (one
key hashed from (seed, stream, step), the sample index in the counter)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from hpcflow.lattice import random as rnd
from hpcflow.lattice.random import (
    MASK32,
    block_uniforms,
    derive_key,
    indexed_normal,
    indexed_uniform,
    normal,
    philox4x32,
    stream_keys,
    uniform,
    words_to_uniform,
)

# Random123, tests/kat_vectors, the three "philox4x32 10" lines: counter (4 words), key
# (2 words), expected output (4 words).
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]

KEYS = torch.tensor([[0x1234567, 0x89ABCDE], [0xFFFFFFFF, 0], [7, 0xDEADBEEF]])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_known_answer_vectors(counter, key, expected):
    out = philox4x32(torch.tensor(counter), torch.tensor(key))
    assert out.dtype == torch.int64
    assert out.tolist() == list(expected)


def test_known_answers_batched_and_broadcast():
    """All three vectors in one call, and a counter batch against one key."""
    counters = torch.tensor([c for c, _, _ in KAT])
    keys = torch.tensor([k for _, k, _ in KAT])
    assert philox4x32(counters, keys).tolist() == [list(e) for _, _, e in KAT]
    zero_key = philox4x32(counters[:1].expand(5, 4), torch.tensor([0, 0]))
    assert zero_key.shape == (5, 4) and zero_key.tolist() == [list(KAT[0][2])] * 5


def test_product_kernels_agree_with_exact_integers(monkeypatch):
    """The wrapping int64 product (default where the device wraps) and the overflow-free split
    give the exact 32-bit halves of ``M c``, and the same Philox stream."""
    assert rnd._product_wraps("cpu")
    gen = torch.Generator().manual_seed(0)
    c = torch.cat([torch.randint(0, 2**32, (2000,), generator=gen),
                   torch.tensor([0, 1, 2**31, 2**32 - 1, 2**32 - 2])])
    for m in (rnd._M0, rnd._M1):
        exact = [((x * m) >> 32, (x * m) & MASK32) for x in c.tolist()]
        for kernel in (rnd._mulhilo_wrap, rnd._mulhilo_split):
            hi, lo = kernel(c, m)
            assert list(zip(hi.tolist(), lo.tolist(), strict=True)) == exact
    a = uniform(KEYS, (3, 4), (5001,))
    monkeypatch.setattr(rnd, "_mulhilo_for", lambda *words: rnd._mulhilo_split)
    assert torch.equal(uniform(KEYS, (3, 4), (5001,)), a)
    assert philox4x32(torch.tensor(KAT[1][0]), torch.tensor(KAT[1][1])).tolist() \
        == list(KAT[1][2])


@pytest.mark.parametrize("dtype,words,scale", [(torch.float64, 2, 2.0**-52),
                                               (torch.float32, 1, 2.0**-23)])
def test_bit_mapping_stays_inside_the_open_interval(dtype, words, scale):
    """The smallest and largest words give ``scale/2`` and ``1 - scale/2``: never 0 or 1,
    and every grid point ``(m + 1/2) scale`` is exact in the float type."""
    lo = words_to_uniform(tuple(torch.tensor([0]) for _ in range(words)), dtype)
    hi = words_to_uniform(tuple(torch.tensor([MASK32]) for _ in range(words)), dtype)
    assert lo.dtype == dtype and hi.dtype == dtype
    assert lo.item() == 0.5 * scale and 0.0 < lo.item()
    assert hi.item() == 1.0 - 0.5 * scale and hi.item() < 1.0
    assert (torch.tensor(1.0, dtype=dtype) - hi).item() == 0.5 * scale  # exact, not rounded
    with pytest.raises(ValueError, match="dtype"):
        words_to_uniform((torch.tensor([0]),), torch.float16)


def test_uniform_passes_kolmogorov_smirnov():
    """1e6 float64 uniforms of one key (fixed: the test is deterministic)."""
    u = uniform(KEYS[:1], (11, 0), (1_000_000,)).flatten().numpy()
    assert u.min() > 0.0 and u.max() < 1.0
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    u32 = uniform(KEYS[1:2], (11, 0), (200_000,), dtype=torch.float32).flatten()
    assert u32.dtype == torch.float32 and 0.0 < u32.min() and u32.max() < 1.0
    assert stats.kstest(u32.double().numpy(), "uniform").pvalue > 1e-3


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1])


def test_counters_samples_and_elements_are_uncorrelated():
    """|corr| < 5 sigma (sigma = 1/sqrt(n)) between streams that differ in one ingredient."""
    n = 100_000
    u = uniform(KEYS, (0, 0), (n,))
    bound = 5.0 / math.sqrt(n)
    assert abs(_corr(u[0], uniform(KEYS, (0, 1), (n,))[0])) < bound  # counter word c3
    assert abs(_corr(u[0], uniform(KEYS, (1, 0), (n,))[0])) < bound  # counter word c2
    assert abs(_corr(u[0], u[1])) < bound and abs(_corr(u[1], u[2])) < bound  # samples
    assert abs(_corr(u[0, :-1], u[0, 1:])) < bound  # neighbouring elements (one block)
    assert abs(_corr(u[0, :-2], u[0, 2:])) < bound  # neighbouring blocks
    # keys differing in one bit only
    near = uniform(KEYS[:1] ^ torch.tensor([[1, 0]]), (0, 0), (n,))
    assert abs(_corr(u[0], near[0])) < bound


def test_sample_numbers_do_not_depend_on_the_batch():
    """Sample b's numbers are a function of its key: the same alone as inside a batch."""
    for fn in (uniform, normal):
        for dtype in (torch.float64, torch.float32):
            batch = fn(KEYS, (5, 6), (7, 9), dtype=dtype)
            alone = fn(KEYS[1:2], (5, 6), (7, 9), dtype=dtype)
            assert batch.shape == (3, 7, 9)
            assert torch.equal(batch[1:2], alone)
            assert torch.equal(fn(KEYS[[2, 0]], (5, 6), (7, 9), dtype=dtype), batch[[2, 0]])


def test_element_layout_and_block_access():
    """Element e is uniform e mod 2 of the block e // 2 (float64), 4 per block in float32;
    ``block_uniforms`` at a subset of blocks returns the same numbers."""
    u = uniform(KEYS, (9, 1), (10,))
    blocks = torch.tensor([4, 0, 2])
    sub = block_uniforms(KEYS[:, None, :], (9, 1), blocks[None, :])
    assert sub.shape == (3, 3, 2)
    assert torch.equal(sub.reshape(3, -1), u[:, [8, 9, 0, 1, 4, 5]])
    u32 = uniform(KEYS, (9, 1), (10,), dtype=torch.float32)
    sub32 = block_uniforms(KEYS[:, None, :], (9, 1), torch.tensor([[2]]), torch.float32)
    assert torch.equal(sub32.reshape(3, 4)[:, :2], u32[:, 8:10])
    # one counter: the words of block n are Philox((n, 0, c2, c3), key)
    words = philox4x32(torch.tensor([2, 0, 9, 1]), KEYS[0])
    expect = torch.stack([words_to_uniform((words[0], words[1])),
                          words_to_uniform((words[2], words[3]))])
    assert torch.equal(sub[0, 2], expect)
    with pytest.raises(ValueError, match="counter"):
        uniform(KEYS, (2**32, 0), (3,))


def test_normal_moments_and_distribution():
    z = normal(KEYS[:1], (2, 3), (200_001,)).flatten()
    n = z.numel()
    assert abs(z.mean().item()) < 5.0 / math.sqrt(n)
    assert abs(z.var().item() - 1.0) < 5.0 * math.sqrt(2.0 / n)
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3
    # the pairs of Box-Muller are independent, not only uncorrelated: compare |z| products
    pairs = z[:-1].reshape(-1, 2)
    assert abs(_corr(pairs[:, 0].abs(), pairs[:, 1].abs())) < 5.0 / math.sqrt(len(pairs))


def test_stream_keys_are_seed_sequence_hashes():
    keys = stream_keys(42, 3, [0, 1, 5])
    assert keys.shape == (3, 2) and keys.dtype == torch.int64
    expect = np.random.SeedSequence([42, 3, 5]).generate_state(2, dtype=np.uint32)
    assert keys[2].tolist() == expect.tolist()
    assert torch.equal(stream_keys(42, 3, torch.tensor([1])), keys[1:2])
    # (seed, stream) pairs that a product or sum would confuse get unrelated keys
    a = stream_keys(1, 2, [0])
    b = stream_keys(2, 1, [0])
    assert not torch.equal(a, b)
    assert len({tuple(k) for k in stream_keys(0, 0, range(1000)).tolist()}) == 1000
    with pytest.raises(ValueError):
        stream_keys(-1, 0, [0])


def _pair_uniforms(words: torch.Tensor) -> torch.Tensor:
    """The two float64 uniforms of one block's words ``[4]``."""
    return torch.stack([words_to_uniform((words[0], words[1])),
                        words_to_uniform((words[2], words[3]))])


def test_indexed_layout_reproduces_known_answers():
    """Key 0, index 0, block 0 gives the words of the Random123 zero vector; in general block
    ``n`` of index ``i`` is Philox((n lo, n hi, i lo, i hi), key): checked at the pi vector's
    key and an index above 2^32 (its counter words 2 and 3)."""
    counter0, key0, words0 = KAT[0]
    u = indexed_uniform(key0, torch.tensor([0]), (2,))
    assert torch.equal(u[0], _pair_uniforms(torch.tensor(words0)))
    u32 = indexed_uniform(key0, torch.tensor([0]), (4,), dtype=torch.float32)
    assert torch.equal(u32[0], words_to_uniform((torch.tensor(words0),), torch.float32))
    counter, key, _ = KAT[2]
    index = counter[2] | counter[3] << 32
    u = indexed_uniform(key, torch.tensor([5, index]), (7,))
    assert u.shape == (2, 7)
    for n in range(4):
        words = philox4x32(torch.tensor([n, 0, counter[2], counter[3]]), torch.tensor(key))
        assert torch.equal(u[1, 2 * n: 2 * n + 2], _pair_uniforms(words)[: 7 - 2 * n])


def test_indexed_numbers_do_not_depend_on_the_batch():
    key = derive_key(3, 4, 5, tag=17)
    idx = torch.tensor([0, 9, 2**40 + 3, 7])
    for fn in (indexed_uniform, indexed_normal):
        for dtype in (torch.float64, torch.float32):
            batch = fn(key, idx, (5, 3), dtype=dtype)
            assert batch.shape == (4, 5, 3) and batch.dtype == dtype
            assert torch.equal(fn(key, idx[[3, 1]], (5, 3), dtype=dtype), batch[[3, 1]])
            assert torch.equal(fn(key, idx[2:3], (5, 3), dtype=dtype), batch[2:3])
    assert indexed_uniform(key, torch.tensor([], dtype=torch.int64), (4,)).shape == (0, 4)


def test_derive_key_is_the_documented_two_block_hash():
    seed, stream, step, tag = 0x123456789ABCDEF0, (5 << 32) + 0xFEDCBA98, (1 << 40) + 7, 0xC0FFEE
    first = philox4x32(torch.tensor([seed & MASK32, seed >> 32, stream & MASK32, stream >> 32]),
                       torch.tensor([tag, 0]))
    second = philox4x32(torch.tensor([step & MASK32, step >> 32, 0, 0]), first[:2])
    assert derive_key(seed, stream, step, tag=tag) == tuple(second[:2].tolist())
    assert derive_key(seed, stream, step, tag=tag + 1) != derive_key(seed, stream, step, tag=tag)
    for bad in ({"seed": -1}, {"stream": 1 << 64}, {"step": -2}, {"tag": 1 << 32}):
        args = {"seed": 0, "stream": 0, "step": 0, "tag": 0} | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            derive_key(**args)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="needs a CUDA device: the same Philox numbers on CPU and GPU")
def test_same_numbers_on_cuda():
    cpu = uniform(KEYS, (1, 2), (40_000,))
    gpu = uniform(KEYS.cuda(), (1, 2), (40_000,))
    assert torch.equal(cpu, gpu.cpu())
    assert philox4x32(torch.tensor(KAT[2][0]).cuda(), torch.tensor(KAT[2][1]).cuda()).tolist() \
        == list(KAT[2][2])
    idx = torch.tensor([0, 3, 2**40 + 1])
    key = derive_key(1, 2, 3, tag=4)
    for dtype in (torch.float64, torch.float32):
        assert torch.equal(indexed_uniform(key, idx, (30_001,), dtype=dtype),
                           indexed_uniform(key, idx.cuda(), (30_001,), dtype=dtype).cpu())
