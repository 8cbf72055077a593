"""Near-duplicate conversations: MinHash signatures and an LSH index, in numpy, computed in batches.

The scheme is datasketch 2.0's ``MinHash(num_perm=32, seed=1, scheme="affine32")`` and
``MinHashLSH``'s banding (tests/unit/test_neardup.py checks both against datasketch): each
shingle's 32-bit hash goes through the MurmurHash3 finaliser, then the ``num_perm`` affine
permutations ``a * h + b mod 2**32`` (the same ``a``, ``b`` as datasketch's, from
``numpy.random.RandomState(seed)``), and a signature is the minimum of each. The LSH splits a
signature into ``b`` bands of ``r`` values, ``(b, r)`` minimising the weighted false positive and
negative probabilities for the threshold (datasketch's ``_optimal_param``, integrated here with
numpy rather than scipy's ``quad``); two conversations are candidates when a band is equal.

The signatures are exactly datasketch's (``MinHash(num_perm=32, seed=1,
hashfunc=xxhash.xxh32_intdigest).update_batch`` of the 3-grams); what differs, for speed (issue
26's throughput), is how they are computed: many conversations' in one set of numpy operations
(:func:`signatures`) instead of a MinHash object each, and an index that keeps, per band value,
only the first (smallest) id that had it: a query answers the earliest similar conversation,
which is all the report names (datasketch's ``min(lsh.query(m))``). No scipy import
(datasketch's costs ~50 MB and a second).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from itertools import chain

import numpy as np
import xxhash

NUM_PERM = 32
SEED = 1
_U32 = np.uint32


@functools.lru_cache(maxsize=4)
def permutations(num_perm: int = NUM_PERM, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters ``(a, b)`` (``a`` odd), from ``RandomState(seed)``."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * _U32(2) + _U32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (as datasketch's ``_fmix``), in place on a uint32 array."""
    h ^= h >> _U32(16)
    h *= _U32(0x85EBCA6B)
    h ^= h >> _U32(13)
    h *= _U32(0xC2B2AE35)
    h ^= h >> _U32(16)
    return h


def _integral(f, lo: float, hi: float, points: int = 2001) -> float:
    xs = np.linspace(lo, hi, points)
    ys = f(xs)
    return float(np.sum((ys[1:] + ys[:-1]) * np.diff(xs)) / 2.0)


@functools.lru_cache(maxsize=16)
def bands(threshold: float, num_perm: int = NUM_PERM, fp_weight: float = 0.5, fn_weight: float = 0.5) -> tuple[int, int]:
    """``(b, r)``: datasketch's ``_optimal_param`` (bands, rows per band) for ``threshold``."""
    best, opt = float("inf"), (1, num_perm)
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = _integral(lambda s, b=b, r=r: 1 - (1 - s ** r) ** b, 0.0, threshold)
            fn = _integral(lambda s, b=b, r=r: 1 - (1 - (1 - s ** r) ** b), threshold, 1.0)
            error = fp * fp_weight + fn * fn_weight
            if error < best:
                best, opt = error, (b, r)
    return opt


def gram_hashes(words: Sequence[bytes]) -> list[int]:
    """The xxh32 hash of each word 3-gram (``b"w1 w2 w3"``) of ``words``: what datasketch's
    ``MinHash(hashfunc=xxhash.xxh32_intdigest).update_batch`` hashes. Small to keep, whatever the
    words' size (a conversation waiting for its batch holds only these)."""
    return list(map(xxhash.xxh32_intdigest, map(b" ".join, zip(words, words[1:], words[2:], strict=False))))


def signatures_of(hashes: Sequence[Sequence[int]], num_perm: int = NUM_PERM) -> list[np.ndarray | None]:
    """The MinHash signature (``num_perm`` uint32) of each row's 3-gram hashes (:func:`gram_hashes`);
    None for a row without any. One numpy pass over all rows."""
    counts = np.fromiter(map(len, hashes), dtype=np.int64, count=len(hashes))
    has = counts > 0
    out: list[np.ndarray | None] = [None] * len(hashes)
    if not has.any():
        return out
    hashed = np.fromiter(chain.from_iterable(hashes), dtype=np.uint32, count=int(counts.sum()))
    a, b = permutations(num_perm)
    permuted = np.multiply.outer(a, _fmix32(hashed))  # (num_perm, 3-grams), wrapping mod 2**32 as intended
    permuted += b[:, None]
    offsets = np.concatenate(([0], np.cumsum(counts[has])[:-1]))
    mins = np.ascontiguousarray(np.minimum.reduceat(permuted, offsets, axis=1).T)  # (rows with 3-grams, num_perm)
    for index, signature in zip(np.flatnonzero(has), mins, strict=True):
        out[int(index)] = signature
    return out


def signatures(rows: Sequence[Sequence[bytes]], num_perm: int = NUM_PERM) -> list[np.ndarray | None]:
    """The MinHash signature of each row's words (word 3-grams; None for fewer than 3 words)."""
    return signatures_of([gram_hashes(row) for row in rows], num_perm)


class LshIndex:
    """MinHash LSH (``(b, r)`` of :func:`bands`): per band, the first id whose signature had that band."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM):
        self.b, self.r = bands(threshold, num_perm)
        self.tables: list[dict[bytes, int]] = [{} for _ in range(self.b)]
        self.size = 0

    def _keys(self, signature: np.ndarray) -> list[bytes]:
        raw = signature.tobytes()
        step = self.r * 4
        return [raw[i * step:(i + 1) * step] for i in range(self.b)]

    def query(self, signature: np.ndarray) -> int | None:
        """The smallest id sharing a band with ``signature`` (a candidate near-duplicate), or None."""
        found = [hit for table, key in zip(self.tables, self._keys(signature), strict=True)
                 if (hit := table.get(key)) is not None]
        return min(found) if found else None

    def insert(self, key_id: int, signature: np.ndarray) -> None:
        for table, key in zip(self.tables, self._keys(signature), strict=True):
            table.setdefault(key, key_id)
        self.size += 1

    def query_insert(self, key_id: int, signature: np.ndarray, *, insert: bool = True) -> int | None:
        """:meth:`query` then (when ``insert``) :meth:`insert`, sharing the band keys."""
        keys = self._keys(signature)
        found = None
        for table, key in zip(self.tables, keys, strict=True):
            hit = table.get(key)
            if hit is not None and (found is None or hit < found):
                found = hit
        if insert:
            for table, key in zip(self.tables, keys, strict=True):
                table.setdefault(key, key_id)
            self.size += 1
        return found
