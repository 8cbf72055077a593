"""Near-duplicate conversations: MinHash signatures and an LSH index, in numpy, computed in batches.

**Shingles.** A conversation's text is its contents joined by newlines; its shingles are the
word 3-grams of its first ``NEAR_DUP_WORDS`` words, where a word is a run of bytes other than
ASCII whitespace in the UTF-8 of the text (ASCII letters lower-cased), counted by its first
``MAX_WORD_BYTES`` bytes. Only a prefix of the text is looked at (:func:`shingle_text`): its
first ``PREFIX_BYTES`` bytes, or ``PREFIX_BYTES_MAX`` when those hold fewer spaces than
``NEAR_DUP_WORDS``, so the work and the memory per conversation are bounded whatever its size.

**Hashes.** All of a batch's words are hashed at once (:func:`signature_matrix`): a word's
hash mixes its bytes, read as little-endian 64-bit chunks, and its length, then goes through
the 64-bit MurmurHash3 finaliser; a 3-gram's hash combines its three word hashes (a polynomial
mod 2**64, then the finaliser) and keeps the top 32 bits. A signature is the minimum of each of
``num_perm`` affine permutations ``a * h + b mod 2**32`` over the 3-grams (datasketch 2.0's
``affine32`` scheme with the same ``a``, ``b``, from ``numpy.random.RandomState(seed)``).

These are not datasketch's hash values (it hashes each 3-gram's bytes with xxh32, one Python
call per 3-gram: two thirds of the gate's cost): what a MinHash promises is that a signature
position agrees between two sets with probability their Jaccard similarity, and
tests/unit/test_neardup.py checks that, against the exact Jaccard of planted pairs and against
datasketch's estimates of the same pairs.

**LSH.** A signature is split into ``b`` bands of ``r`` values, ``(b, r)`` minimising the
weighted false positive and negative probabilities for the threshold (datasketch's
``_optimal_param``, integrated here with numpy rather than scipy's ``quad``); two conversations
are candidates when a band is equal. The index keeps, per band value, only the first (smallest)
id that had it: a query answers the earliest similar conversation, which is all the report names
(datasketch's ``min(lsh.query(m))``). No scipy import (datasketch's costs ~50 MB and a second).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

NUM_PERM = 32
SEED = 1
NEAR_DUP_WORDS = 96
MAX_WORD_BYTES = 64  # a longer word counts by its first bytes (one 8 MiB "word" of padding is held as 64 bytes)
PREFIX_BYTES = NEAR_DUP_WORDS * 8  # prose: ~130 words
PREFIX_BYTES_MAX = NEAR_DUP_WORDS * (MAX_WORD_BYTES + 1)  # long words (code, identifiers, padding)
_U32 = np.uint32
_U64 = np.uint64
_K1 = _U64(0x9E3779B97F4A7C15)
_K2 = _U64(0xC2B2AE3D27D4EB4F)
# MASKS[n]: the low n bytes of a 64-bit chunk (a word's last chunk is zero-padded)
_MASKS = np.array([(1 << (8 * n)) - 1 for n in range(8)] + [(1 << 64) - 1], dtype=_U64)


@functools.lru_cache(maxsize=4)
def permutations(num_perm: int = NUM_PERM, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters ``(a, b)`` (``a`` odd), from ``RandomState(seed)``."""
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * _U32(2) + _U32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finaliser, in place on a uint64 array (wrapping mod 2**64 as intended)."""
    h ^= h >> _U64(33)
    h *= _U64(0xFF51AFD7ED558CCD)
    h ^= h >> _U64(33)
    h *= _U64(0xC4CEB9FE1A85EC53)
    h ^= h >> _U64(33)
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


def _head(contents: Sequence[str], size: int) -> tuple[bytes, bool]:
    """The first ``size`` bytes of the UTF-8 of the contents joined by newlines (encoding only the
    messages they come from), and whether the text is longer."""
    parts = []
    total = -1
    for content in contents:
        # a character is at least one byte: ``size - total`` characters suffice for the bytes left
        part = content[:size - total].encode("utf-8", "surrogatepass")
        parts.append(part)
        total += len(part) + 1
        if total >= size:
            text = part if len(parts) == 1 else b"\n".join(parts)
            return text[:size], total > size or len(parts) < len(contents)
    return b"\n".join(parts), False


def shingle_text(contents: Sequence[str]) -> bytes:
    """The bytes a conversation's shingles come from: a prefix of the UTF-8 of its contents joined by
    newlines, ASCII letters lower-cased (see the module docstring). At most ``PREFIX_BYTES_MAX``
    bytes, whatever the conversation's size: small to keep while it waits for its batch."""
    head, longer = _head(contents, PREFIX_BYTES)
    if longer and head.count(b" ") < NEAR_DUP_WORDS:
        head, _ = _head(contents, PREFIX_BYTES_MAX)
    return head.lower()


def _word_hashes(blob: bytes, n_rows: int, row_starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(hash, row)`` of each of the first ``NEAR_DUP_WORDS`` words of each row of ``blob`` (rows
    separated by whitespace, ``blob`` padded with at least 64 spaces)."""
    raw = np.frombuffer(blob, dtype=np.uint8)
    space = (raw == 32) | ((raw - np.uint8(9)) < 5)  # b" \t\n\v\f\r": bytes.split's whitespace
    edges = np.flatnonzero(space[1:] != space[:-1]) + 1  # blob starts and ends with a space
    starts, ends = edges[0::2], edges[1::2]
    row = np.searchsorted(row_starts, starts, "right") - 1
    first = np.searchsorted(starts, row_starts)  # each row's first word
    keep = np.arange(len(starts)) - first[row] < NEAR_DUP_WORDS
    starts, row = starts[keep], row[keep]
    length = np.minimum(ends[keep] - starts, MAX_WORD_BYTES)
    # 8 bytes from every offset (unaligned little-endian reads; the padding keeps them in bounds)
    chunks = np.ndarray((len(blob) - 7,), dtype="<u8", buffer=blob, strides=(1,))
    h = chunks[starts] & _MASKS[np.minimum(length, 8)]
    h ^= length.astype(_U64) * _K2
    longer = np.flatnonzero(length > 8)
    offset = 8
    while len(longer):
        h[longer] = (h[longer] * _K1) ^ (chunks[starts[longer] + offset] & _MASKS[np.minimum(length[longer] - offset, 8)])
        offset += 8
        longer = longer[length[longer] > offset]
    return _fmix64(h), row


def signature_matrix(texts: Sequence[bytes], num_perm: int = NUM_PERM) -> tuple[np.ndarray, np.ndarray]:
    """``(signatures, rows)``: the MinHash signature (``num_perm`` uint32) of each of ``texts``
    (:func:`shingle_text`) that has at least 3 words, and the indices of those rows. One set of
    numpy operations for the whole batch: no Python call per word or 3-gram."""
    n = len(texts)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=n)
    row_starts = np.ones(n, dtype=np.int64)
    np.cumsum(lengths[:-1] + 1, out=row_starts[1:])
    row_starts[1:] += 1
    blob = b" " + b" ".join(texts) + b" " * 65
    h, row = _word_hashes(blob, n, row_starts)
    same = row[2:] == row[:-2]  # three consecutive words of one row
    grams = (h[:-2] * _K1 + h[1:-1]) * _K1 + h[2:]
    grams = (_fmix64(grams[same]) >> _U64(32)).astype(np.uint32)
    counts = np.bincount(row[2:][same], minlength=n)
    rows = np.flatnonzero(counts)
    if not len(rows):
        return np.zeros((0, num_perm), dtype=np.uint32), rows
    a, b = permutations(num_perm)
    permuted = np.multiply.outer(a, grams)  # (num_perm, 3-grams), wrapping mod 2**32 as intended
    permuted += b[:, None]
    offsets = np.zeros(len(rows), dtype=np.int64)
    np.cumsum(counts[rows][:-1], out=offsets[1:])
    return np.ascontiguousarray(np.minimum.reduceat(permuted, offsets, axis=1).T), rows


def signatures(texts: Sequence[bytes], num_perm: int = NUM_PERM) -> list[np.ndarray | None]:
    """The MinHash signature of each of ``texts`` (:func:`shingle_text`); None for fewer than 3 words."""
    matrix, rows = signature_matrix(texts, num_perm)
    out: list[np.ndarray | None] = [None] * len(texts)
    for index, signature in zip(rows.tolist(), matrix, strict=True):
        out[index] = signature
    return out


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

    def _band_keys(self, matrix: np.ndarray) -> list[list[bytes]]:
        """Per band, the keys of every row of a signature matrix (the bytes :meth:`_keys` gives)."""
        width = np.dtype((np.void, self.r * 4))
        return [np.ascontiguousarray(matrix[:, i * self.r:(i + 1) * self.r]).view(width).ravel().tolist()
                for i in range(self.b)]

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
        """:meth:`query` then (when ``insert``) :meth:`insert`."""
        return self.query_insert_many([key_id], signature[None, :], 1 if insert else 0)[0]

    def query_many(self, matrix: np.ndarray) -> list[int | None]:
        """:meth:`query` of each row of a signature matrix."""
        found = [list(map(table.get, keys)) for table, keys in zip(self.tables, self._band_keys(matrix), strict=True)]
        return [min(hits, default=None) for hits in ([h for h in row if h is not None] for row in zip(*found, strict=True))]

    def query_insert_many(self, ids: Sequence[int], matrix: np.ndarray, n_insert: int) -> list[int | None]:
        """:meth:`query_insert` of each row in order (``ids`` increasing), inserting only the first
        ``n_insert``: as one call per row would, each row sees the rows before it."""
        ids = list(ids)
        found = []
        for table, keys in zip(self.tables, self._band_keys(matrix), strict=True):
            # setdefault answers the earliest id with this key: an earlier one, or the row's own when new
            hits = list(map(table.setdefault, keys[:n_insert], ids[:n_insert]))
            hits += map(table.get, keys[n_insert:])
            found.append(hits)
        self.size += n_insert
        out: list[int | None] = []
        for own, hits in zip(ids, zip(*found, strict=True), strict=True):
            best = None
            for hit in hits:
                if hit is not None and hit != own and (best is None or hit < best):
                    best = hit
            out.append(best)
        return out
