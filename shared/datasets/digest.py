"""The conversation digest: one definition, used by preparation (de-duplication, the split), the
corpus, the evaluation set's carving and the data quality gate's leakage check."""

from __future__ import annotations

import orjson
import xxhash

_dumps = orjson.dumps


def conversation_digest(roles: list[str], contents: list[str]) -> int:
    """128-bit digest of a normalised conversation: its de-duplication key and its split bucket.

    The bytes hashed are ``[[roles...], [contents...]]`` as JSON: unambiguous (JSON escapes
    every string) and cheap (two flat lists of strings, no per-message objects or sorted keys),
    and independent of the input's key order, spacing or escapes. xxh3 is fixed by its
    specification, so the digest, hence the split, is the same across runs, machines and input
    formats. It is not keyed: someone who crafted a collision would only get one of their own
    conversations dropped as a duplicate.
    """
    return xxhash.xxh3_128_intdigest(_dumps((roles, contents)))
