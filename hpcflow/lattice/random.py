"""Counter-based random numbers: Philox4x32-10 in plain torch integer arithmetic.

A random number is a pure function of ``(key, counter, element index)`` (Salmon, Moraes, Dror,
Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC'11; the Random123 library): there is no
generator state, so a configuration's numbers are the same on any device, for any batch size
and in any order in which the batch is processed. The local updates of
:mod:`hpcflow.updates.heatbath` draw every random number here.

Representation: 32-bit words live in ``int64`` tensors with values in ``[0, 2^32)`` (torch has
no unsigned 32-bit arithmetic on every device). The 32 x 32 -> 64-bit product of a Philox round
is one ``int64`` product, which wraps modulo ``2^64`` past ``2^63``: its high word is
``(p >> 32) & 0xFFFFFFFF`` (``>>`` on ``int64`` is arithmetic, hence the mask after the shift)
and its low word ``p & 0xFFFFFFFF``. A one-time check per device type confirms the wrap-around
against exact integers; where it failed, the product would be assembled from two 32 x 16-bit
products instead (:func:`_mulhilo_split`, same result, about half the speed).

Layout of a stream: ``keys: [B, 2]`` (one key per configuration, :func:`stream_keys`); the four
counter words of the Philox block that feeds element ``e`` are ``(c0, c1)`` = the 64-bit block
index of ``e`` split into two 32-bit words and ``(c2, c3)`` = two user words (``counter``).
One block (four 32-bit words) gives two float64 or four float32 uniforms.

A second layout serves draws keyed by ``(seed, stream, step)`` with the sample index in the
counter (the Haar prior, :mod:`hpcflow.flows.prior`): one key for the whole batch,
:func:`derive_key`, and counter words ``(c2, c3)`` = the 64-bit sample index
(:func:`indexed_uniform`, :func:`indexed_normal`). The batch's numbers then come from one
vectorized pass on the target device, with no per-sample work on the host.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

__all__ = [
    "MASK32",
    "philox4x32",
    "stream_keys",
    "block_uniforms",
    "per_block",
    "words_to_uniform",
    "uniform",
    "normal",
    "derive_key",
    "indexed_uniform",
    "indexed_normal",
]

MASK32 = 0xFFFFFFFF
# Philox4x32 multipliers and Weyl key increments (Salmon et al. 2011, table 2).
_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo_wrap(c, m: int):
    """``(hi, lo)`` 32-bit words of the 64-bit product ``m c`` (``c``, ``m`` in ``[0, 2^32)``)
    from one ``int64`` product: it exceeds ``2^63`` for large factors and wraps to a negative
    value with the right low 64 bits, so the arithmetic ``>>`` is masked after shifting."""
    p = c * m
    if isinstance(p, torch.Tensor):  # a fresh product: mask it in place (half the allocations)
        return (p >> 32).bitwise_and_(MASK32), p.bitwise_and_(MASK32)
    return (p >> 32) & MASK32, p & MASK32


def _xor_into(fresh, *others):
    """``fresh ^ others[0] ^ ...``, in place in ``fresh`` (a tensor no one else holds, or a
    Python int) wherever broadcasting does not enlarge it: on a large batch allocating a new
    tensor per operation costs about as much as the operation."""
    for o in others:
        grows = not isinstance(fresh, torch.Tensor) or (
            isinstance(o, torch.Tensor)
            and torch.broadcast_shapes(fresh.shape, o.shape) != fresh.shape)
        fresh = fresh ^ o if grows else fresh.bitwise_xor_(o)
    return fresh


def _mulhilo_split(c, m: int):
    """The same without overflow, from two 32 x 16-bit products (each below ``2^48``): for a
    device whose ``int64`` product does not wrap (:func:`_product_wraps`)."""
    p_lo = c * (m & 0xFFFF)
    p_hi = c * (m >> 16)
    hi = (p_hi + (p_lo >> 16)) >> 16  # floor(m c / 2^32), all terms < 2^49
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & MASK32
    return hi, lo


@functools.cache
def _product_wraps(device_type: str) -> bool:
    """Whether ``int64`` products on this kind of device wrap modulo ``2^64`` (two's
    complement), checked once against exact integers on operands whose products pass ``2^63``.
    Every device torch supports does, and :func:`_mulhilo_wrap` is then about twice as fast
    per Philox round as :func:`_mulhilo_split`; the result is the same either way."""
    ops = [0xFFFFFFFF, 0xFFFFFFFE, 0x80000000, 0xDEADBEEF, 0x9E3779B9, 1, 0]
    c = torch.tensor(ops, dtype=torch.int64, device=device_type)
    for m in (_M0, _M1):
        hi, lo = _mulhilo_wrap(c, m)
        exact = [((x * m) >> 32, (x * m) & MASK32) for x in ops]
        if list(zip(hi.tolist(), lo.tolist(), strict=True)) != exact:
            return False
    return True


def _mulhilo_for(*words):
    """The product kernel for the device of the first tensor among ``words``."""
    for w in words:
        if isinstance(w, torch.Tensor):
            return _mulhilo_wrap if _product_wraps(w.device.type) else _mulhilo_split
    return _mulhilo_wrap  # Python integers: exact


def _philox_words(c0, c1, c2, c3, k0, k1, rounds: int = 10):
    """Philox4x32 on separate words (broadcasting ``int64`` tensors or Python ints).

    One round (Salmon et al. 2011, eq. 3 with the Random123 word order):
    ``(hi0, lo0) = M0 c0``, ``(hi1, lo1) = M1 c2``,
    ``c <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)``, with the key of round ``r`` equal to
    ``k + r (0x9E3779B9, 0xBB67AE85) mod 2^32``.
    """
    mulhilo = _mulhilo_for(c0, c1, c2, c3, k0, k1)
    ks0, ks1 = _key_schedule(k0, _W0, rounds), _key_schedule(k1, _W1, rounds)
    for r in range(rounds):
        hi0, lo0 = mulhilo(c0, _M0)
        hi1, lo1 = mulhilo(c2, _M1)
        c0, c1, c2, c3 = _xor_into(hi1, c1, ks0[r]), lo1, _xor_into(hi0, c3, ks1[r]), lo0
    return c0, c1, c2, c3


def _key_schedule(k, weyl: int, rounds: int) -> list:
    """Round keys ``k + r W mod 2^32``, ``r = 0 .. rounds-1``, in one tensor operation (a
    per-round add and mask on a small key tensor costs as much dispatch time as on a large
    one)."""
    if not isinstance(k, torch.Tensor):
        return [(int(k) + r * weyl) & MASK32 for r in range(rounds)]
    steps = torch.arange(rounds, dtype=torch.int64, device=k.device) * weyl
    # the round axis first: each round key is contiguous
    return ((k.unsqueeze(0) + steps.view(-1, *([1] * k.dim()))) & MASK32).unbind(0)


def _philox_broadcast(c0, c1, c2, c3, k0, k1, rounds: int = 10, finish=None) -> torch.Tensor:
    """:func:`_philox_words` on broadcasting inputs (at least one a tensor): ``[*shape, width]``
    with ``finish(w0, w1, w2, w3) -> [*shape, width]`` applied to the output words (default:
    the words stacked, ``width = 4``). One pass over the whole shape: processing it in
    cache-sized chunks was measured slower (materialized broadcasts, more dispatches)."""
    args = [c0, c1, c2, c3, k0, k1]
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    device = tensors[0].device
    shape = torch.broadcast_shapes(*[t.shape for t in tensors])
    words = [torch.as_tensor(w, dtype=torch.int64, device=device).expand(shape)
             for w in _philox_words(*args, rounds=rounds)]
    if finish is None:
        return torch.stack(words, dim=-1)
    return finish(*words)


def philox4x32(counter: torch.Tensor, key: torch.Tensor, rounds: int = 10) -> torch.Tensor:
    """Philox4x32-``rounds`` block function: ``counter [..., 4], key [..., 2] -> [..., 4]``.

    ``int64`` tensors holding 32-bit words (values in ``[0, 2^32)``); ``counter`` and ``key``
    broadcast against each other. ``rounds = 10`` is the standard Philox4x32-10 (checked against
    the Random123 known-answer vectors in the tests).
    """
    counter = torch.as_tensor(counter, dtype=torch.int64)
    key = torch.as_tensor(key, dtype=torch.int64, device=counter.device)
    return _philox_broadcast(*counter.unbind(-1), *key.unbind(-1), rounds=rounds)


def stream_keys(seed: int, stream: int, indices, device=None) -> torch.Tensor:
    """Philox keys ``[B, 2]`` (``int64``, 32-bit words) of the samples ``indices``.

    Key of sample ``i``: ``numpy.random.SeedSequence([seed, stream, i]).generate_state(2)``.
    SeedSequence hashes the whole entropy list, so distinct ``(seed, stream, i)`` give
    unrelated keys; arithmetic combinations such as ``seed * (rank + 1)`` collide.
    """
    idx = [int(i) for i in (indices.tolist() if hasattr(indices, "tolist") else indices)]
    for name, v in (("seed", seed), ("stream", stream)):
        if int(v) < 0:
            raise ValueError(f"{name} must be >= 0, got {v!r}")
    if any(i < 0 for i in idx):
        raise ValueError(f"sample indices must be >= 0, got {idx!r}")
    states = [np.random.SeedSequence([int(seed), int(stream), i]).generate_state(2, np.uint32)
              for i in idx]
    arr = np.array(states, dtype=np.int64).reshape(len(idx), 2)
    return torch.from_numpy(arr).to(device)


def words_to_uniform(words: tuple[torch.Tensor, ...], dtype=torch.float64) -> torch.Tensor:
    """Uniform numbers in the open interval ``(0, 1)`` from 32-bit words.

    float64: two words give ``m = (w0 >> 6) 2^26 + (w1 >> 6)`` (52 bits) and
    ``u = (m + 1/2) 2^-52``; float32: one word gives ``m = w >> 9`` (23 bits) and
    ``u = (m + 1/2) 2^-23``. The half offset keeps both ends away from 0 and 1, and with one
    bit fewer than the float's significand (53, 24) every grid point is exactly representable:
    ``(m + 1/2) 2^-53`` would round its largest points to ``1.0``.
    ``words``: two tensors (float64) or one (float32) of the same shape; returns that shape.
    """
    if dtype == torch.float64:
        w0, w1 = words
        m = ((w0 >> 6) << 26) | (w1 >> 6)
        return (m.to(torch.float64) + 0.5) * 2.0**-52
    if dtype == torch.float32:
        (w,) = words
        return ((w >> 9).to(torch.float32) + 0.5) * 2.0**-23
    raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype!r}")


def per_block(dtype) -> int:
    """Uniforms per Philox block: 2 (float64) or 4 (float32)."""
    if dtype == torch.float64:
        return 2
    if dtype == torch.float32:
        return 4
    raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype!r}")


def _check_counter(counter) -> tuple:
    c2, c3 = counter
    for c in (c2, c3):
        if not isinstance(c, torch.Tensor) and not 0 <= int(c) <= MASK32:
            raise ValueError(f"counter words must be integers in [0, 2^32), got {counter!r}")
    return c2, c3


def block_uniforms(keys: torch.Tensor, counter, blocks: torch.Tensor,
                   dtype=torch.float64) -> torch.Tensor:
    """The uniforms of Philox blocks at explicit block indices: ``[..., per_block]``.

    keys ``[..., 2]``, blocks ``[...]`` (``int64``, ``0 <= block < 2^64``), and the two
    counter words ``counter = (c2, c3)`` (ints or ``int64`` tensors) broadcast against each
    other; block ``n`` uses the counter ``(n mod 2^32, n >> 32, c2, c3)``. Element ``j`` of the
    last axis is uniform ``j`` of the block (2 for float64, 4 for float32, as in
    :func:`uniform`). Lets a caller draw for a subset of elements (the pending ones of a
    rejection sampler) with the numbers the full set would have had.
    """
    c2, c3 = _check_counter(counter)
    blocks = torch.as_tensor(blocks, dtype=torch.int64)
    keys = torch.as_tensor(keys, dtype=torch.int64, device=blocks.device)
    return _philox_broadcast(blocks & MASK32, blocks >> 32, c2, c3, keys[..., 0], keys[..., 1],
                             finish=functools.partial(_block_to_uniforms, dtype=dtype))


def _block_to_uniforms(w0, w1, w2, w3, *, dtype) -> torch.Tensor:
    """The four output words of Philox blocks ``[...]`` -> their uniforms ``[..., per_block]``:
    ``(w0, w1)`` and ``(w2, w3)`` (float64) or each word (float32), in one set of operations."""
    if per_block(dtype) == 2:
        return words_to_uniform((torch.stack([w0, w2], -1), torch.stack([w1, w3], -1)), dtype)
    return words_to_uniform((torch.stack([w0, w1, w2, w3], -1),), dtype)


def _leading_elements(u: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Block uniforms ``[B, blocks, per_block]`` -> the first ``prod(shape)`` of them in block
    order, ``[B, *shape]``."""
    return u.flatten(1)[:, :math.prod(shape)].reshape(u.shape[0], *shape)


def _box_muller(u: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Box-Muller (Box & Muller, Ann. Math. Stat. 29 (1958) 610): uniform pairs
    ``u [B, pairs, 2]`` in ``(0, 1)`` -> standard normals ``[B, *shape]``, normals ``2j`` and
    ``2j + 1`` being ``sqrt(-2 log u_{j,0}) (cos, sin)(2 pi u_{j,1})``. ``u`` never is 0, so
    the logarithm is finite; the tails reach ``sqrt(-2 log u_min)``: 8.5 sigma (float64),
    5.8 sigma (float32)."""
    radius = torch.sqrt(-2.0 * torch.log(u[..., 0]))
    angle = (2.0 * math.pi) * u[..., 1]
    z = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
    return _leading_elements(z, shape)


def uniform(keys: torch.Tensor, counter: tuple[int, int], shape, *,
            dtype=torch.float64) -> torch.Tensor:
    """Uniforms in the open interval ``(0, 1)``: ``keys [B, 2] -> [B, *shape]``.

    Element ``e`` (flat index in ``shape``) of sample ``b`` is uniform ``e mod p`` of the Philox
    block ``e // p`` (``p = 2`` for float64, 4 for float32) with counter
    ``(block mod 2^32, block >> 32, *counter)`` and key ``keys[b]``: a pure function of
    ``(keys[b], counter, e)`` (:func:`words_to_uniform` for the bit mapping).
    """
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    p = per_block(dtype)
    keys = torch.as_tensor(keys, dtype=torch.int64)
    blocks = torch.arange(-(-n // p), dtype=torch.int64, device=keys.device)
    return _leading_elements(block_uniforms(keys[:, None, :], counter, blocks[None, :], dtype),
                             shape)


def normal(keys: torch.Tensor, counter: tuple[int, int], shape, *,
           dtype=torch.float64) -> torch.Tensor:
    """Standard normal numbers ``[B, *shape]`` by Box-Muller (:func:`_box_muller`) from the
    uniforms ``[B, pairs, 2]`` of :func:`uniform` with the same ``(keys, counter)``: normals
    ``2j`` and ``2j + 1`` are ``sqrt(-2 log u_{2j}) (cos, sin)(2 pi u_{2j+1})``."""
    shape = tuple(int(s) for s in shape)
    pairs = -(-math.prod(shape) // 2)
    return _box_muller(uniform(keys, counter, (pairs, 2), dtype=dtype), shape)


# ---------------------------------------------------------------- one key, index in the counter
_U64 = 1 << 64


def derive_key(seed: int, stream: int, step: int, *, tag: int) -> tuple[int, int]:
    """A Philox key ``(k0, k1)`` (two 32-bit words) hashed from ``seed``, ``stream``, ``step``
    (integers in ``[0, 2^64)``) and a domain ``tag`` (32 bits) naming the consumer.

    Two Philox4x32-10 blocks on Python integers (exact; no tensor, no device):
    ``(a0, a1) = Philox((seed_lo, seed_hi, stream_lo, stream_hi), key=(tag, 0))[:2]``, then
    ``(k0, k1) = Philox((step_lo, step_hi, 0, 0), key=(a0, a1))[:2]``. For a fixed key Philox
    is a bijection of its 128-bit counter and its output passes BigCrush (Salmon et al. 2011),
    so distinct inputs give unrelated keys and two of them coincide with probability
    ``2^-64``; unlike arithmetic folds such as ``seed * (rank + 1)`` or ``(stream << 32) + step``
    no structured pair collides, and the same ``(seed, stream, step)`` under another ``tag``
    gives an unrelated key. Philox rather than ``numpy.random.SeedSequence`` (which
    :func:`stream_keys` uses): the whole generator is one published function, and the
    entropy lists ``[a, b, c]`` and ``[a, b, c, 0]`` hash alike in SeedSequence.
    """
    for name, v in (("seed", seed), ("stream", stream), ("step", step)):
        if not 0 <= int(v) < _U64:
            raise ValueError(f"{name} must be an integer in [0, 2^64), got {v!r}")
    if not 0 <= int(tag) <= MASK32:
        raise ValueError(f"tag must be an integer in [0, 2^32), got {tag!r}")
    seed, stream, step = int(seed), int(stream), int(step)
    a0, a1, _, _ = _philox_words(seed & MASK32, seed >> 32, stream & MASK32, stream >> 32,
                                 int(tag), 0)
    k0, k1, _, _ = _philox_words(step & MASK32, step >> 32, 0, 0, a0, a1)
    return k0, k1


def _indexed_blocks(key: tuple[int, int], indices: torch.Tensor, n_blocks: int,
                    dtype) -> torch.Tensor:
    """Uniforms ``[B, n_blocks, per_block]`` of the blocks ``0 .. n_blocks-1`` of each sample
    in ``indices [B]``: counter ``(n mod 2^32, n >> 32, i mod 2^32, i >> 32)``, key ``key``."""
    idx = torch.as_tensor(indices, dtype=torch.int64)[:, None]
    blocks = torch.arange(n_blocks, dtype=torch.int64, device=idx.device)[None, :]
    k0, k1 = (int(k) for k in key)
    return _philox_broadcast(blocks & MASK32, blocks >> 32, idx & MASK32, idx >> 32, k0, k1,
                             finish=functools.partial(_block_to_uniforms, dtype=dtype))


def indexed_uniform(key: tuple[int, int], indices: torch.Tensor, shape, *,
                    dtype=torch.float64) -> torch.Tensor:
    """Uniforms in ``(0, 1)`` for the samples ``indices``: ``[B] -> [B, *shape]``, on the
    device of ``indices`` (``int64``, values in ``[0, 2^63)``).

    One key for the batch (:func:`derive_key`), the sample index in the counter: element ``e``
    of sample ``i`` is uniform ``e mod p`` (``p = 2`` float64, 4 float32) of the Philox block
    with counter ``(n mod 2^32, n >> 32, i mod 2^32, i >> 32)``, ``n = e // p``, mapped by
    :func:`words_to_uniform`. A pure function of ``(key, i, e)``: the same for any batch that
    contains ``i``, in any order, on any device (integer arithmetic only).
    """
    shape = tuple(int(s) for s in shape)
    n_blocks = -(-math.prod(shape) // per_block(dtype))
    return _leading_elements(_indexed_blocks(key, indices, n_blocks, dtype), shape)


def indexed_normal(key: tuple[int, int], indices: torch.Tensor, shape, *,
                   dtype=torch.float64) -> torch.Tensor:
    """Standard normals ``[B, *shape]`` for the samples ``indices [B]``: Box-Muller
    (:func:`_box_muller`) on the uniforms ``[B, pairs, 2]`` of :func:`indexed_uniform`
    (pair ``j`` from uniforms ``2j``, ``2j + 1``). Integers equal on every device; the floats
    differ at most by the rounding of ``log``, ``cos``, ``sin`` in the device's math library.
    """
    shape = tuple(int(s) for s in shape)
    pairs = -(-math.prod(shape) // 2)
    return _box_muller(indexed_uniform(key, indices, (pairs, 2), dtype=dtype), shape)
