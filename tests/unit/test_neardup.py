"""The gate's MinHash LSH (shared.datasets.neardup): the batched numpy computation equals a plain
one-conversation-at-a-time reference of the documented scheme; its estimates track the exact
Jaccard similarity of planted pairs as closely as datasketch's (a dev dependency) do; planted
near-duplicates are found and unrelated conversations are not; the index answers as datasketch's
``min(lsh.query(m))`` does. The whole-conversation prefilter never misses what a detector finds."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pytest
import xxhash
from datasketch import MinHash, MinHashLSH

from shared.datasets import neardup, sensitive

WORDS = "river table orange seven window paper garden music travel history science cloud bright".split()
M64 = (1 << 64) - 1


# ---------------------------------------------------------------- a plain reference of the scheme


def ref_fmix64(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & M64
    return h ^ (h >> 33)


def ref_word_hash(word: bytes) -> int:
    word = word[:neardup.MAX_WORD_BYTES]
    chunks = [int.from_bytes(word[i:i + 8], "little") for i in range(0, len(word), 8)]
    h = chunks[0] ^ ((len(word) * 0xC2B2AE3D27D4EB4F) & M64)
    for chunk in chunks[1:]:
        h = ((h * 0x9E3779B97F4A7C15) & M64) ^ chunk
    return ref_fmix64(h)


def ref_shingles(text: bytes) -> set[int]:
    words = [ref_word_hash(w) for w in text.split()[:neardup.NEAR_DUP_WORDS]]
    k = 0x9E3779B97F4A7C15
    return {ref_fmix64((((a * k + b) & M64) * k + c) & M64) >> 32 for a, b, c in zip(words, words[1:], words[2:], strict=False)}


def ref_signature(text: bytes) -> list[int] | None:
    grams = ref_shingles(text)
    if not grams:
        return None
    a, b = neardup.permutations()
    return [min((int(ai) * g + int(bi)) & 0xFFFFFFFF for g in grams) for ai, bi in zip(a, b, strict=True)]


def ref_shingle_text(contents: list[str]) -> bytes:
    text = "\n".join(contents).encode("utf-8", "surrogatepass")
    head = text[:neardup.PREFIX_BYTES]
    if len(text) > len(head) and head.count(b" ") < neardup.NEAR_DUP_WORDS:
        head = text[:neardup.PREFIX_BYTES_MAX]
    return head.lower()


def random_text(rng: random.Random) -> str:
    pieces = WORDS + ["Ünïcode", "café", "数据", "🙂", "A" * rng.randint(9, 80), "x" * 8, "MiXeD", "\t", "\n", "  "]
    return " ".join(rng.choice(pieces) for _ in range(rng.randint(0, 60)))


def test_permutations_and_bands_are_datasketchs() -> None:
    a, b = neardup.permutations()
    m = MinHash(num_perm=neardup.NUM_PERM, seed=neardup.SEED)
    assert m.scheme == "affine32" and (m.permutations[0] == a).all() and (m.permutations[1] == b).all()
    for threshold in (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9):
        lsh = MinHashLSH(threshold=threshold, num_perm=neardup.NUM_PERM)
        assert neardup.bands(threshold) == (lsh.b, lsh.r), threshold


def test_batched_signatures_equal_the_plain_reference() -> None:
    rng = random.Random(7)
    texts = [random_text(rng).encode().lower() for _ in range(300)]
    texts += [b"", b"a b", b" \t\n", b"one two three", b"w " * 200, b"\xff\xfe x y z", b"a" * 200 + b" b c",
              *(b" ".join(b"t%d" % rng.randrange(10**6) for _ in range(rng.randint(97, 200))) for _ in range(20))]
    rng.shuffle(texts)
    for batch in (texts[:1], texts[:7], texts):
        for text, signature in zip(batch, neardup.signatures(batch), strict=True):
            expected = ref_signature(text)
            assert (signature is None) == (expected is None), text
            if expected is not None:
                assert signature.tolist() == expected, text


def test_shingle_text_is_a_bounded_prefix() -> None:
    rng = random.Random(5)
    for _ in range(300):
        contents = [random_text(rng) for _ in range(rng.randint(1, 6))]
        assert neardup.shingle_text(contents) == ref_shingle_text(contents)
    padded = ["00000001 " + "a" * (8 << 20) + " tail"]  # the review's gzip bomb pads a row with one 8 MiB "word"
    text = neardup.shingle_text(padded)
    assert len(text) == neardup.PREFIX_BYTES_MAX and text.split() == [b"00000001", b"a" * (neardup.PREFIX_BYTES_MAX - 9)]


# ---------------------------------------------------------------- the estimates, against exact Jaccard and datasketch


def planted_pairs(rng: random.Random, n: int) -> list[tuple[list[bytes], list[bytes]]]:
    """Pairs of 96-word texts: a text and a copy with ``k`` words replaced (k from 0 to 60)."""
    vocabulary = [f"w{i}".encode() for i in range(5000)]
    pairs = []
    for i in range(n):
        words = rng.sample(vocabulary, neardup.NEAR_DUP_WORDS)
        other = list(words)
        for j in rng.sample(range(len(other)), (i * 7) % 61):
            other[j] = b"changed%d" % j
        pairs.append((words, other))
    return pairs


def grams(words: list[bytes]) -> set[bytes]:
    return {b" ".join(g) for g in zip(words, words[1:], words[2:], strict=False)}


def datasketch_minhash(words: list[bytes]) -> MinHash:
    m = MinHash(num_perm=neardup.NUM_PERM, seed=neardup.SEED, hashfunc=xxhash.xxh32_intdigest)
    m.update_batch(grams(words))
    return m


def test_estimates_track_exact_jaccard_as_closely_as_datasketchs() -> None:
    pairs = planted_pairs(random.Random(11), 400)
    ours = neardup.signatures([b" ".join(w) for pair in pairs for w in pair])
    errors, theirs_errors = [], []
    for i, (a, b) in enumerate(pairs):
        exact = len(grams(a) & grams(b)) / len(grams(a) | grams(b))
        estimate = float(np.mean(ours[2 * i] == ours[2 * i + 1]))
        errors.append(estimate - exact)
        theirs_errors.append(datasketch_minhash(a).jaccard(datasketch_minhash(b)) - exact)
        # 32 permutations: a standard deviation of at most sqrt(0.25 / 32) = 0.088
        assert abs(estimate - exact) <= 0.36, (i, exact, estimate)
    errors_a, theirs_a = np.abs(errors), np.abs(theirs_errors)
    assert abs(np.mean(errors)) < 0.015  # unbiased
    assert np.mean(errors_a) < 0.06 and np.mean(errors_a) < np.mean(theirs_a) + 0.01, (np.mean(errors_a), np.mean(theirs_a))
    assert np.mean(errors_a > 3 * 0.088) < 0.01


def test_planted_near_duplicates_are_found_and_unrelated_ones_not() -> None:
    rng = random.Random(3)
    vocabulary = [f"v{i}".encode() for i in range(20000)]
    near, unrelated, theirs_near = 0, 0, 0
    trials = 300
    index, lsh = neardup.LshIndex(0.8), MinHashLSH(threshold=0.8, num_perm=neardup.NUM_PERM)
    for i in range(trials):
        words = rng.sample(vocabulary, neardup.NEAR_DUP_WORDS)
        copy = list(words)
        copy[rng.randrange(len(copy))] = b"edited"  # one word: Jaccard 91/97 = 0.94 or more
        stranger = rng.sample(vocabulary, neardup.NEAR_DUP_WORDS)
        signatures = neardup.signatures([b" ".join(words), b" ".join(copy), b" ".join(stranger)])
        index.insert(i, signatures[0])
        near += index.query(signatures[1]) == i
        unrelated += index.query(signatures[2]) is not None
        lsh.insert(i, datasketch_minhash(words))
        theirs_near += lsh.query(datasketch_minhash(copy)) == [i]
    # bands 3 x 10: a pair of Jaccard 0.94 is a candidate with probability 1 - (1 - 0.94**10)**3 = 0.91
    assert near / trials > 0.85 and abs(near - theirs_near) / trials < 0.08, (near, theirs_near)
    assert unrelated == 0


# ---------------------------------------------------------------- the index


def test_the_index_answers_the_earliest_similar_conversation_as_datasketch_does() -> None:
    rng = random.Random(3)
    rows = []
    for i in range(300):
        if i % 10 == 9:  # a near copy of an earlier row
            row = list(rows[rng.randrange(i)])
            row[rng.randrange(len(row))] = b"changed"
        else:
            row = [rng.choice(WORDS).encode() for _ in range(30)]
        rows.append(row)
    signatures = neardup.signatures([b" ".join(r) for r in rows])
    ours, theirs = neardup.LshIndex(0.8), MinHashLSH(threshold=0.8, num_perm=neardup.NUM_PERM)
    for line, signature in enumerate(signatures):
        # datasketch's index, fed our signatures: the same banding, the same answer
        m = MinHash(num_perm=neardup.NUM_PERM, hashvalues=signature.astype(np.uint64), scheme="affine32")
        expected = theirs.query(m)
        assert ours.query_insert(line, signature) == (min(expected) if expected else None)
        theirs.insert(line, m, check_duplication=False)


def test_query_insert_many_equals_one_call_per_row() -> None:
    rng = random.Random(9)
    base = [[rng.choice(WORDS).encode() for _ in range(20)] for _ in range(40)]
    rows = [b" ".join(rng.choice(base)[:rng.randint(12, 20)]) for _ in range(200)]
    matrix, kept = neardup.signature_matrix(rows)
    one, many = neardup.LshIndex(0.5), neardup.LshIndex(0.5)
    expected = [one.query_insert(i, s, insert=i < 150) for i, s in enumerate(matrix)]
    assert many.query_insert_many(list(range(len(matrix))), matrix, 150) == expected
    assert many.query_many(matrix) == [one.query(s) for s in matrix]
    assert len(kept) == len(rows) and any(e is not None for e in expected)


@pytest.mark.parametrize("threshold", [0.95, 1.0])
def test_thresholds_datasketch_refuses_still_index(threshold: float) -> None:
    index = neardup.LshIndex(threshold)
    signature = neardup.signatures([b"a b c d"])[0]
    assert index.query_insert(0, signature) is None and index.query_insert(1, signature) == 0
    assert np.asarray(signature).dtype == np.uint32


# ---------------------------------------------------------------- the prefilter


def test_every_anchor_is_where_its_literal_says() -> None:
    literals = {lit for literals, _ in sensitive._SECRETS.values() for lit in literals}
    anchored = {lit.decode() for _, needles in sensitive._ANCHORS for lit, _ in needles}
    assert anchored | {lit.decode() for lit in sensitive._KEPT_LITERALS} == literals
    kept = set(range(256)) - set(sensitive.kept_bytes_table())
    assert all(set(lit) <= kept for lit in sensitive._KEPT_LITERALS)
    for anchor, needles in sensitive._ANCHORS:
        for literal, offset in needles:
            if -offset < len(literal):
                assert literal[-offset:][:1] == anchor, literal
            else:  # past the literal: the pattern puts it there
                assert literal == b"xox" and anchor == b"-" and offset == -4


@pytest.mark.parametrize("seed", range(3))
def test_the_prefilter_never_misses_what_a_detector_finds(seed: int) -> None:
    rng = random.Random(seed)
    secrets = ["AKIAIOSFODNN7EXAMPLE", "ASIAIOSFODNN7EXAMPLE", "ghp_" + "a1" * 18, "xoxb-123456789012-abcdefghij",
               "AIza" + "B" * 35, "sk-" + "c" * 24, "AccountKey=" + "A" * 86 + "==", "?sig=" + "d" * 30,
               "eyJabcdefghij.eyJabcdefghij.abcdefghij", "-----BEGIN RSA PRIVATE KEY-----", "a@example.org",
               "555-123-4567", "DE89 3704 0044 0532 0130 00"]
    decoys = ["K", "S", "-", "z", "=", "J", "_", "sk", "xo", "Zz", "S-", "ASI", "AKI", "1", "22"]
    for _ in range(400):
        pool = WORDS + decoys * 2 if rng.random() < 0.5 else WORDS  # half without decoys: the secret alone triggers
        parts = [rng.choice(pool) for _ in range(rng.randint(1, 80))]
        if rng.random() < 0.5:
            parts.insert(rng.randrange(len(parts) + 1), rng.choice(secrets))
        text = rng.choice((" ", "", "\n", "\t")).join(parts)
        if sensitive.find_sensitive(text):
            assert sensitive.may_hold_sensitive(text.encode()), text
            assert sensitive.may_hold_sensitive(orjson.dumps((["user"], [text, "x\n\"\\"]))), text
        elif not any(ch in text for ch in "@0123456789") and not any(lit in text for lits, _ in sensitive._SECRETS.values() for lit in lits):
            assert not sensitive.may_hold_sensitive(text.encode()), text
