"""The gate's MinHash LSH (shared.datasets.neardup) is datasketch's, computed in batches: the same
permutations, bands, signatures and answers (datasketch, a dev dependency, is the reference)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import xxhash
from datasketch import MinHash, MinHashLSH

from shared.datasets import neardup, sensitive
from shared.datasets.quality import NEAR_DUP_WORDS, first_words

WORDS = "river table orange seven window paper garden music travel history science cloud bright".split()


def grams(words: list[bytes]) -> list[bytes]:
    return [b" ".join(g) for g in zip(words, words[1:], words[2:], strict=False)]


def reference(words: list[bytes]) -> MinHash:
    m = MinHash(num_perm=neardup.NUM_PERM, seed=neardup.SEED, hashfunc=xxhash.xxh32_intdigest)
    m.update_batch(set(grams(words)))
    return m


def test_permutations_and_bands_are_datasketchs() -> None:
    a, b = neardup.permutations()
    m = MinHash(num_perm=neardup.NUM_PERM, seed=neardup.SEED)
    assert m.scheme == "affine32" and (m.permutations[0] == a).all() and (m.permutations[1] == b).all()
    for threshold in (0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9):
        lsh = MinHashLSH(threshold=threshold, num_perm=neardup.NUM_PERM)
        assert neardup.bands(threshold) == (lsh.b, lsh.r), threshold


def test_signatures_in_a_batch_equal_datasketchs_one_by_one() -> None:
    rng = random.Random(7)
    rows = [[rng.choice(WORDS).encode() for _ in range(rng.randint(0, 40))] for _ in range(200)]
    rows += [[], [b"a", b"b"], [b"caf\xc3\xa9", b"na\xc3\xafve", b"ok"]]
    for row, signature in zip(rows, neardup.signatures(rows), strict=True):
        if len(row) < 3:
            assert signature is None
        else:
            assert (signature == reference(row).hashvalues).all()


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
    ours, theirs = neardup.LshIndex(0.8), MinHashLSH(threshold=0.8, num_perm=neardup.NUM_PERM)
    found = []
    for line, (row, signature) in enumerate(zip(rows, neardup.signatures(rows), strict=True)):
        m = reference(row)
        expected = theirs.query(m)
        assert ours.query_insert(line, signature) == (min(expected) if expected else None)
        theirs.insert(line, m, check_duplication=False)
        found.append(bool(expected))
    assert sum(found) >= 10  # most planted near copies (Jaccard ~0.85 against a threshold of 0.8) are candidates


def test_first_words_splits_only_a_prefix_but_equals_splitting_everything() -> None:
    rng = random.Random(5)
    for n_words in (0, 2, 95, 96, 97, 400):
        text = "\n".join(" ".join(rng.choice(WORDS + ["Ünïcode", "A" * 50]) for _ in range(n_words // 4 + 1))
                         for _ in range(4))
        expected = " ".join(text.split()[:NEAR_DUP_WORDS]).lower().encode().split()
        assert first_words(text) == expected


def test_every_secret_literal_has_a_sentinel_byte_of_its_own() -> None:
    literals = {lit for literals, _ in sensitive._SECRETS.values() for lit in literals}
    assert {lit.decode() for _, lit in sensitive._SECRET_SCAN} == literals
    assert all(sentinel in lit for sentinel, lit in sensitive._SECRET_SCAN)


@pytest.mark.parametrize("threshold", [0.95, 1.0])
def test_thresholds_datasketch_refuses_still_index(threshold: float) -> None:
    index = neardup.LshIndex(threshold)
    signature = neardup.signatures([[b"a", b"b", b"c", b"d"]])[0]
    assert index.query_insert(0, signature) is None and index.query_insert(1, signature) == 0
    assert np.asarray(signature).dtype == np.uint32


def test_a_padded_word_is_held_by_its_prefix_only() -> None:
    """The review's gzip bomb pads each row with one 8 MiB "word": a pending row must not hold it
    (nine pending rows took the preparation past 200 MB)."""
    from shared.datasets.quality import MAX_WORD_BYTES, first_words

    assert first_words("00000001 " + "a" * (8 << 20) + " tail") == [b"00000001", b"a" * MAX_WORD_BYTES]
    assert first_words("Short words " + "b" * 100 + " then more") == [b"short", b"words", b"b" * MAX_WORD_BYTES,
                                                                        b"then", b"more"]
