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
    return (p >> 32) & MASK32, p & MASK32


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
        c0, c1, c2, c3 = hi1 ^ c1 ^ ks0[r], lo1, hi0 ^ c3 ^ ks1[r], lo0
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
    p = per_block(dtype)

    def finish(w0, w1, w2, w3):
        # both pairs (or all four words) in one set of operations
        if p == 2:
            return words_to_uniform((torch.stack([w0, w2], -1), torch.stack([w1, w3], -1)),
                                    dtype)
        return words_to_uniform((torch.stack([w0, w1, w2, w3], -1),), dtype)

    return _philox_broadcast(blocks & MASK32, blocks >> 32, c2, c3, keys[..., 0], keys[..., 1],
                             finish=finish)


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
    u = block_uniforms(keys[:, None, :], counter, blocks[None, :], dtype)
    return u.reshape(keys.shape[0], -1)[:, :n].reshape(keys.shape[0], *shape)


def normal(keys: torch.Tensor, counter: tuple[int, int], shape, *,
           dtype=torch.float64) -> torch.Tensor:
    """Standard normal numbers ``[B, *shape]`` by Box-Muller (Box & Muller, Ann. Math. Stat.
    29 (1958) 610) from :func:`uniform` with the same ``(keys, counter)``: normals ``2j`` and
    ``2j + 1`` are ``sqrt(-2 log u_{2j}) (cos, sin)(2 pi u_{2j+1})``. ``u`` never is 0, so the
    logarithm is finite."""
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape)
    pairs = -(-n // 2)
    u = uniform(keys, counter, (pairs, 2), dtype=dtype)
    radius = torch.sqrt(-2.0 * torch.log(u[..., 0]))
    angle = (2.0 * math.pi) * u[..., 1]
    z = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1)
    return z.reshape(keys.shape[0], -1)[:, :n].reshape(keys.shape[0], *shape)
