"""Chat data preparation: stream a file, validate every line, normalise, de-duplicate, split, report.

Input: one conversation per line in the ultrachat_200k schema
``{"prompt", "prompt_id", "messages": [{"role", "content"}, ...]}`` as ``.jsonl``, ``.jsonl.gz``
or ``.parquet`` (rows instead of lines). Output: ``train.jsonl`` and ``test.jsonl`` in the schema
the ``chat_completion_pipeline`` component reads (the same three keys, nothing else) and a
report (counts, every bad line with its 1-based number, warnings, length statistics, decision).

Memory stays flat whatever the file size: lines are read one at a time through a 1 MiB buffer
(a line longer than ``MAX_ROW_BYTES`` is reported, not held; see "Limits" below), outputs are written as they go,
and statistics are histograms. The one thing that grows is the de-duplication index: one
128-bit digest and a line number per distinct conversation (about 130 bytes each, so
~27 MB for ultrachat_200k's 208k train conversations).

The same digest (xxh3-128 of the normalised conversation, see ``conversation_digest``) is the
de-duplication key and the split bucket, so a line costs one canonical serialisation and one
hash. Lines already in the output form take a fast path in ``_Preparation.read_jsonl`` and are
written through byte for byte.

Limits (settings, all formats; issue 26.1): a line or parquet row decoding to more than
``MAX_ROW_BYTES`` is reported and skipped; reading stops, and the file is rejected with a
``too_large`` error naming the limit, once the upload has decoded to more than
``MAX_DECODED_BYTES``, or to more than ``MAX_EXPANSION_RATIO`` x the raw bytes read so far (past
``EXPANSION_FLOOR_BYTES``): an 815 KiB gzip bomb stops after about 100 MiB, a 1.7 KB parquet of
256 dictionary-encoded 3 MiB rows before any row is decoded. Parquet is checked from its footer
first (column chunk sizes), then read in batches of ``PARQUET_BATCH_ROWS`` with text columns
kept dictionary-encoded and each row's size computed from the Arrow buffers before decoding.

Everything here works on local files and binary streams; storage and the ledger live in
``shared.datasets.intake``. Nothing heavy is imported at module level (pyarrow only for parquet).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import itertools
import logging
import operator
import queue
import re
import sys
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import xxhash

from shared.datasets.digest import conversation_digest  # noqa: F401 - re-exported: preparation's digest
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Suffix -> format. ".jsonl.gz" before ".jsonl"'s neighbours: matched by endswith.
FORMATS: dict[str, str] = {".jsonl.gz": "jsonl.gz", ".jsonl": "jsonl", ".parquet": "parquet"}

ROLES = frozenset({"system", "user", "assistant"})
CONVERSATION_KEYS = frozenset({"prompt", "prompt_id", "messages"})
MESSAGE_KEYS = frozenset({"role", "content"})

# A line longer than MAX_ROW_BYTES (a setting, 8 MiB by default) is reported and skipped
# without being held in memory; the same cap applies to a parquet row's decoded size.
MAX_LINE_BYTES = 8 << 20  # the default of MAX_ROW_BYTES
# The decoded/raw ratio (MAX_EXPANSION_RATIO) is enforced once this much is decoded, so a small,
# very repetitive file (a test fixture, a file of one system prompt) is never refused for it.
EXPANSION_FLOOR_BYTES = 64 << 20
# Parquet rows are decoded (to Python objects) in slices of at most this many bytes.
PARQUET_SLICE_BYTES = 16 << 20
PARQUET_BATCH_ROWS = 64
READ_BUFFER_BYTES = 1 << 20
WRITE_BUFFER_BYTES = 1 << 20
# Token statistics (when a tokenizer is given) are estimated on this many conversations.
TOKEN_SAMPLE = 1000
MAX_WARNING_KEYS = 50
_UTF8_BOM = b"\xef\xbb\xbf"
_JSON_POSITION = re.compile(r"line \d+ column (\d+) \(char \d+\)")

# Error kinds: one per bad line (the first problem found), with its 1-based line number.
INVALID_UTF8 = "invalid_utf8"
INVALID_JSON = "invalid_json"
LINE_TOO_LONG = "line_too_long"
NOT_AN_OBJECT = "not_an_object"
MISSING_MESSAGES = "missing_messages"
MESSAGES_NOT_A_LIST = "messages_not_a_list"
EMPTY_MESSAGES = "empty_messages"
MESSAGE_NOT_AN_OBJECT = "message_not_an_object"
MISSING_ROLE = "missing_role"
UNKNOWN_ROLE = "unknown_role"
MISSING_CONTENT = "missing_content"
CONTENT_NOT_A_STRING = "content_not_a_string"
EMPTY_CONTENT = "empty_content"
SYSTEM_NOT_FIRST = "system_not_first"
NO_USER_TURN = "no_user_turn"
NO_ASSISTANT_TURN = "no_assistant_turn"
INVALID_PROMPT = "invalid_prompt"
INVALID_PROMPT_ID = "invalid_prompt_id"
DUPLICATE = "duplicate"  # counted apart from the invalid lines: the data is fine, just repeated
UNREADABLE_FILE = "unreadable_file"  # corrupt gzip/parquet: reading stops there
TOO_LARGE = "too_large"  # decoded size or decoded/raw ratio above the limits: reading stops there

ERROR_KINDS = (
    INVALID_UTF8, INVALID_JSON, LINE_TOO_LONG, NOT_AN_OBJECT, MISSING_MESSAGES, MESSAGES_NOT_A_LIST,
    EMPTY_MESSAGES, MESSAGE_NOT_AN_OBJECT, MISSING_ROLE, UNKNOWN_ROLE, MISSING_CONTENT,
    CONTENT_NOT_A_STRING, EMPTY_CONTENT, SYSTEM_NOT_FIRST, NO_USER_TURN, NO_ASSISTANT_TURN,
    INVALID_PROMPT, INVALID_PROMPT_ID, DUPLICATE, UNREADABLE_FILE, TOO_LARGE,
)


def detect_format(name: str) -> str | None:
    """The data format from a file or blob name, None when it is not chat data we read."""
    lowered = name.lower()
    for suffix, fmt in FORMATS.items():
        if lowered.endswith(suffix):
            return fmt
    return None


def strip_format_suffix(name: str) -> str:
    lowered = name.lower()
    for suffix in FORMATS:
        if lowered.endswith(suffix):
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------------- streams


class ChunkStream(io.RawIOBase):
    """A readable raw stream over an iterator of byte chunks (e.g. a blob download's ``chunks()``)."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class HashingReader(io.RawIOBase):
    """Passes a binary stream through while computing its SHA-256 and size (the content identity).

    The hashing runs on a helper thread (hashlib releases the GIL on large buffers), so on a
    machine with a second core it costs the parsing thread only a copy of each chunk.
    Use as a context manager, or call ``close()``: it stops the thread.
    """

    def __init__(self, source: BinaryIO):
        self._source = source
        self._readinto = getattr(source, "readinto", None)
        self._sha256 = hashlib.sha256()
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=8)  # bounded: at most ~8 MiB in flight
        self._thread: threading.Thread | None = None
        self._digest: str | None = None
        self.size = 0

    def readable(self) -> bool:
        return True

    def _hash_chunks(self) -> None:
        while (chunk := self._chunks.get()) is not None:
            self._sha256.update(chunk)

    def readinto(self, buffer: Any) -> int:
        if self._readinto is not None:
            n = self._readinto(buffer) or 0
            chunk = bytes(memoryview(buffer)[:n]) if n else b""
        else:  # streams without readinto
            chunk = self._source.read(len(buffer))
            n = len(chunk)
            buffer[:n] = chunk
        if n:
            if self._thread is None:
                self._thread = threading.Thread(target=self._hash_chunks, name="content-sha256", daemon=True)
                self._thread.start()
            self._chunks.put(chunk)
            self.size += n
        return n

    def drain(self) -> None:
        """Read (and hash) whatever the parser left unread, so the hash always covers the whole file."""
        buffer = bytearray(READ_BUFFER_BYTES)
        while self.readinto(buffer):
            pass

    def hexdigest(self) -> str:
        """SHA-256 of everything read so far; ends the hashing thread (call after the last read)."""
        if self._digest is None:
            self._stop()
            self._digest = self._sha256.hexdigest()
        return self._digest

    def _stop(self) -> None:
        if self._thread is not None:
            self._chunks.put(None)
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        self._stop()
        super().close()


class InputTooLarge(Exception):
    """The upload decodes to more than the limits allow (``MAX_DECODED_BYTES``, ``MAX_EXPANSION_RATIO``)."""


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n / 1024:.1f} KiB"


class DecodedBudget:
    """Counts the bytes an upload decodes to and stops reading past the limits.

    ``raw_bytes`` says how many raw (as uploaded) bytes have been read so far: the decoded/raw
    ratio is that of what has been read, so a decompression bomb is stopped after decoding
    ``MAX_EXPANSION_RATIO`` x its first compressed megabyte or so, never after inflating all of it.
    """

    def __init__(self, settings: Settings, raw_bytes: Callable[[], int]):
        self.max_bytes = settings.max_decoded_bytes
        self.max_ratio = settings.max_expansion_ratio
        self.raw_bytes = raw_bytes
        self.decoded = 0

    def charge(self, n: int) -> None:
        self.decoded += n
        self.check()

    def check(self, raw: int | None = None) -> None:
        decoded = self.decoded
        if decoded > self.max_bytes:
            raise InputTooLarge(f"the file decodes to more than {_mib(self.max_bytes)} (MAX_DECODED_BYTES): "
                                f"refused after {_mib(decoded)}")
        if decoded > EXPANSION_FLOOR_BYTES:
            raw = max(self.raw_bytes() if raw is None else raw, 1)
            if decoded > self.max_ratio * raw:
                raise InputTooLarge(f"the file expands more than {self.max_ratio:g}x when decoded (MAX_EXPANSION_RATIO): "
                                    f"{_mib(raw)} read decoded to {_mib(decoded)} ({decoded / raw:.0f}x); "
                                    "refused as a decompression bomb")


class CountingReader(io.RawIOBase):
    """Passes a decoded stream (gzip, or the raw JSONL itself) through, charging a DecodedBudget."""

    def __init__(self, source: BinaryIO, budget: DecodedBudget):
        self._source = source
        self._budget = budget

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._source.readinto(buffer) or 0
        if n:
            self._budget.charge(n)
        return n


# --------------------------------------------------------------------------- statistics


class Distribution:
    """Streaming count / mean / min / max and quantiles, in constant memory.

    Values below 128 are counted exactly; larger ones in buckets keeping their top 7 bits
    (quantiles within about 1%). The hot loop appends values to ``batch`` (a list append per
    value); ``flush`` folds a batch in with C-level passes (``sum``, ``min``, ``max``,
    ``Counter`` over mapped shifts), so no Python function runs per value.
    """

    BATCH = 8192

    def __init__(self) -> None:
        self.count = 0
        self.total = 0
        self.min: int | None = None
        self.max: int | None = None
        self._buckets: Counter[int] = Counter()
        self.batch: list[int] = []

    def add(self, value: int) -> None:
        self.batch.append(value)
        if len(self.batch) >= self.BATCH:
            self.flush()

    def flush(self) -> None:
        values = self.batch  # emptied in place at the end: the hot loop holds on to this list
        if not values:
            return
        self.count += len(values)
        self.total += sum(values)
        low, high = min(values), max(values)
        self.min = low if self.min is None else min(self.min, low)
        self.max = high if self.max is None else max(self.max, high)
        # bucket = value with all but its top 7 bits cleared: shift = max(bit_length - 7, 0)
        shifts = list(map(max, map(operator.sub, map(int.bit_length, values), _SEVENS), _ZEROS))
        self._buckets.update(map(operator.lshift, map(operator.rshift, values, shifts), shifts))
        values.clear()

    def quantile(self, q: float) -> int | None:
        self.flush()
        if not self.count:
            return None
        rank = q * self.count
        seen = 0
        for bucket in sorted(self._buckets):
            seen += self._buckets[bucket]
            if seen >= rank:
                if bucket >= 128:  # the middle of the bucket
                    bucket += (1 << (bucket.bit_length() - 7)) // 2
                return max(self.min or 0, min(self.max or 0, bucket))
        return self.max

    def summary(self) -> dict[str, Any] | None:
        self.flush()
        if not self.count:
            return None
        return {
            "min": self.min, "mean": round(self.total / self.count, 1), "max": self.max,
            "p50": self.quantile(0.5), "p90": self.quantile(0.9), "p99": self.quantile(0.99),
            "total": self.total,
        }


_SEVENS = itertools.repeat(7)
_ZEROS = itertools.repeat(0)


# --------------------------------------------------------------------------- validation


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_name(value: Any) -> str:
    return "null" if value is None else {dict: "object", list: "array", str: "string", bool: "boolean"}.get(
        type(value), type(value).__name__)


class LineError(Exception):
    """A line that cannot be used; ``kind`` is one of ERROR_KINDS."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message


_get_role = operator.itemgetter("role")
_get_content = operator.itemgetter("content")
_strip = str.strip
_dumps = orjson.dumps


def split_threshold(test_fraction: float) -> int:
    """The split rule: a conversation whose digest is below this goes to test, else to train.

    Depends only on the digest, so a conversation lands in the same split in any file and in
    any corpus built from files (``shared.datasets.corpus`` applies the same rule).
    """
    return int(test_fraction * (1 << 64)) << 64


def _output_form(obj: Any) -> tuple[list[dict[str, str]], list[str], list[str]] | None:
    """``(messages, roles, contents)`` when ``obj`` is a conversation exactly in the output form, else None.

    The common case, checked with a few C-level passes over the message list and no Python
    call per message: exactly the keys prompt, prompt_id (non-empty strings) and messages, every
    message exactly ``{"role", "content"}`` with a known role and already-stripped non-empty
    string content, a user and an assistant turn, a system turn only first. None means "look
    closer": ``normalise_conversation`` then normalises the line or names its problem.
    """
    if type(obj) is not dict or len(obj) != 3:
        return None
    messages = obj.get("messages")
    prompt = obj.get("prompt")
    prompt_id = obj.get("prompt_id")
    if (type(messages) is not list or type(prompt) is not str or type(prompt_id) is not str
            or not prompt_id or not prompt or prompt.isspace()):
        return None
    try:
        roles = list(map(_get_role, messages))  # TypeError/KeyError: a message that is not an object, no role
        contents = list(map(_get_content, messages))
        # str.strip returns the very same object when there is nothing to strip, so the list
        # compares by identity: "already stripped" costs no string comparison (and a
        # non-string content raises TypeError).
        if not (list(map(_strip, contents)) == contents and "" not in contents
                and sum(map(len, messages)) == 2 * len(roles)):  # both keys present: no other key
            return None
        # Every role a user or assistant turn but one system turn first (compared, not hashed:
        # fresh strings would have to be hashed for a set test).
        users, assistants = roles.count("user"), roles.count("assistant")
        others = len(roles) - users - assistants
        if not users or not assistants or (others and (others != 1 or roles[0] != "system")):
            return None
    except (TypeError, KeyError):  # not an object, a missing key, an unhashable role...
        return None
    return messages, roles, contents


def normalise_conversation(obj: Any) -> tuple[str, str, list[dict[str, str]], list[str], list[str], bool,
                                              list[tuple[str, str]] | None]:
    """Check one parsed conversation and return it normalised; raise LineError for the first problem.

    Returns ``(prompt, prompt_id, messages, roles, contents, canonical, unknown_keys)``:
    ``canonical`` says the input already was exactly the output form (the line can be passed
    through), ``unknown_keys`` lists dropped keys for the warnings (or None).

    Normalisation: roles are lower-cased and stripped, content is stripped of surrounding
    whitespace, unknown keys are dropped, a missing prompt is the first user turn and a missing
    prompt_id is the SHA-256 hex of the prompt (ultrachat's own convention).
    """
    fast = _output_form(obj)
    if fast is not None:
        messages, roles, contents = fast
        return obj["prompt"], obj["prompt_id"], messages, roles, contents, True, None
    if type(obj) is not dict:
        raise LineError(NOT_AN_OBJECT, f"a line must be a JSON object, got {_type_name(obj)}")
    messages = obj.get("messages")
    if type(messages) is not list or not messages:
        if messages is None:
            raise LineError(MISSING_MESSAGES, "no 'messages' list")
        if type(messages) is not list:
            raise LineError(MESSAGES_NOT_A_LIST, f"'messages' must be a list, got {_type_name(messages)}")
        raise LineError(EMPTY_MESSAGES, "'messages' is empty")
    messages_out, roles, contents, unknown = _normalise_messages(messages)
    canonical = messages_out is messages
    if len(obj) != 3 or not obj.keys() <= CONVERSATION_KEYS:
        canonical = False
        if not obj.keys() <= CONVERSATION_KEYS:
            unknown = [("conversation", str(k)) for k in obj if k not in CONVERSATION_KEYS] + (unknown or [])
    prompt = obj.get("prompt")
    if type(prompt) is not str or not prompt or prompt.isspace():
        if prompt is not None and type(prompt) is not str:
            raise LineError(INVALID_PROMPT, f"'prompt' must be a string, got {_type_name(prompt)}")
        prompt = contents[roles.index("user")]
        canonical = False
    prompt_id = obj.get("prompt_id")
    if type(prompt_id) is not str or not prompt_id:
        if prompt_id is not None and type(prompt_id) is not str:
            raise LineError(INVALID_PROMPT_ID, f"'prompt_id' must be a string, got {_type_name(prompt_id)}")
        prompt_id = hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()
        canonical = False
    return prompt, prompt_id, messages_out, roles, contents, canonical, unknown


def _normalise_messages(messages: list[Any]) -> tuple[list[dict[str, str]], list[str], list[str],
                                                      list[tuple[str, str]] | None]:
    """The full check of a message list, naming the first problem.

    Returns ``(messages, roles, contents, unknown)``; ``messages`` is the input list itself when
    every message already was in normal form, else a new normalised list.
    """
    roles: list[str] = []
    contents: list[str] = []
    unknown: list[tuple[str, str]] = []
    changed = False
    has_user = has_assistant = False
    for index, message in enumerate(messages, 1):
        if type(message) is not dict:
            raise LineError(MESSAGE_NOT_AN_OBJECT, f"message {index} must be an object, got {_type_name(message)}")
        role = message.get("role")
        content = message.get("content")
        if type(role) is not str or role not in ROLES:
            if role is None:
                raise LineError(MISSING_ROLE, f"message {index} has no 'role'")
            normalised = role.strip().lower() if type(role) is str else None
            if normalised not in ROLES:
                raise LineError(UNKNOWN_ROLE, f"message {index}: role {_short(role)} is not one of system, user, assistant")
            role = normalised
            changed = True
        if type(content) is not str:
            if content is None:
                raise LineError(MISSING_CONTENT, f"message {index} ({role}) has no 'content'")
            raise LineError(CONTENT_NOT_A_STRING, f"message {index} ({role}): content must be a string, got {_type_name(content)}")
        stripped = content.strip()
        if not stripped:
            raise LineError(EMPTY_CONTENT, f"message {index} ({role}) has empty content")
        if stripped is not content:
            changed = True
        if role == "assistant":
            has_assistant = True
        elif role == "user":
            has_user = True
        elif index != 1:
            raise LineError(SYSTEM_NOT_FIRST, f"message {index} is a system message; only the first may be")
        if len(message) > 2:
            unknown.extend(("message", str(k)) for k in message if k not in MESSAGE_KEYS)
            changed = True
        roles.append(role)
        contents.append(stripped)
    if not has_user:
        raise LineError(NO_USER_TURN, "no user message")
    if not has_assistant:
        raise LineError(NO_ASSISTANT_TURN, "no assistant message")
    out = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)] if changed else messages
    return out, roles, contents, unknown or None


def _output_line(raw: bytes) -> bytes:
    """A line already in the output form, with exactly one "\\n" at its end."""
    return raw if raw[-1:] == b"\n" and raw[-2:] != b"\r\n" else raw.rstrip(b"\r\n") + b"\n"


# --------------------------------------------------------------------------- preparation


@dataclasses.dataclass
class PreparedData:
    """Result of one preparation: where the outputs are, the report, and the input's identity."""

    report: dict[str, Any]
    content_sha256: str
    size_bytes: int
    train_path: Path
    test_path: Path

    @property
    def accepted(self) -> bool:
        return bool(self.report["decision"]["accepted"])

    @property
    def counts(self) -> dict[str, Any]:
        return self.report["counts"]


class _Preparation:
    """State of one pass: counters, dedup index, statistics, and the two open output files."""

    def __init__(self, settings: Settings, train: BinaryIO, test: BinaryIO,
                 token_counter: Callable[[list[dict[str, str]]], int] | None, quality: Any = None):
        self.settings = settings
        self.quality = quality  # shared.datasets.quality.QualityScan, or None (no gate)
        self.train = train
        self.test = test
        self.token_counter = token_counter
        # A conversation goes to test when the top 64 bits of its digest are below this.
        self.test_below = split_threshold(settings.test_fraction)
        self.seen: dict[int, int] = {}  # conversation digest -> line it was first seen on
        self.lines = 0
        self.blank = 0
        self.duplicates = 0
        self.invalid: dict[str, int] = {}
        self.n_train = 0
        self.n_test = 0
        self.last_train: bytes = b""  # the last record written to train (see ensure_test_split)
        self.errors: list[dict[str, Any]] = []
        self.errors_omitted = 0
        self.warnings: dict[tuple[str, str], dict[str, Any]] = {}
        self.warnings_omitted = 0
        self.messages = Distribution()
        self.chars = Distribution()
        self.tokens = Distribution()
        self.unreadable: str | None = None
        self.refused: str | None = None  # the decoded-size limits stopped reading (InputTooLarge)

    @property
    def valid(self) -> int:
        return self.n_train + self.n_test

    def error(self, line: int, kind: str, message: str) -> None:
        if kind == DUPLICATE:
            self.duplicates += 1
        else:
            self.invalid[kind] = self.invalid.get(kind, 0) + 1
        if len(self.errors) < self.settings.report_error_cap:
            self.errors.append({"line": line, "kind": kind, "message": message})
        else:
            self.errors_omitted += 1

    def warn_unknown(self, line: int, unknown: list[tuple[str, str]]) -> None:
        for where, key in unknown:
            entry = self.warnings.get((where, key))
            if entry is not None:
                entry["count"] += 1
            elif len(self.warnings) < MAX_WARNING_KEYS:
                self.warnings[(where, key)] = {
                    "kind": "unknown_key", "where": where, "key": key[:100], "count": 1, "first_line": line,
                    "message": f"unknown {where} key {_short(key)} dropped from the output"}
            else:
                self.warnings_omitted += 1

    def add(self, line: int, obj: Any, raw: bytes | None = None) -> None:
        """One parsed conversation (and its raw line, if any): validate, de-duplicate, write to its split.

        ``read_jsonl`` runs the same steps inline for lines already in the output form.
        """
        try:
            prompt, prompt_id, messages, roles, contents, canonical, unknown = normalise_conversation(obj)
        except LineError as exc:
            self.error(line, exc.kind, exc.message)
            return
        if unknown:
            self.warn_unknown(line, unknown)
        encoded = _dumps((roles, contents))
        digest = xxhash.xxh3_128_intdigest(encoded)  # = conversation_digest(roles, contents)
        first = self.seen.setdefault(digest, line)
        if first != line:
            self.error(line, DUPLICATE, f"same conversation as line {first}")
            return
        if self.quality is not None:
            scanned = self.quality.observe(line, roles, contents, encoded)
            if scanned is not contents:  # redacted (DATA_POLICY=redact): the prepared copy changes
                contents = scanned
                messages = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]
                canonical = False
        if canonical and raw is not None:
            record = _output_line(raw)  # already exactly the output form: passed through
        else:
            record = b"".join((b'{"prompt":', _dumps(prompt), b',"prompt_id":', _dumps(prompt_id),
                               b',"messages":', _dumps(messages), b"}\n"))
        if digest < self.test_below:
            self.test.write(record)
            self.n_test += 1
        else:
            self.train.write(record)
            self.last_train = record
            self.n_train += 1
        self.messages.add(len(roles))
        self.chars.add(sum(map(len, contents)))
        if self.token_counter is not None and self.tokens.count + len(self.tokens.batch) < TOKEN_SAMPLE:
            self.tokens.add(self.token_counter(messages))

    def add_line(self, line: int, raw: bytes) -> None:
        """One raw JSONL line (bytes, newline included) that ``read_jsonl``'s fast path did not take."""
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.bad_json(line, raw, exc)
            return
        self.add(line, obj, raw)

    def bad_json(self, line: int, raw: bytes, exc: Exception) -> None:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            self.error(line, INVALID_UTF8, f"bytes are not UTF-8 (byte {bad.start + 1} of the line: {bad.reason})")
            return
        # orjson counts the trailing newline as a line of its own: say "column" only.
        message = _JSON_POSITION.sub(r"column \1", str(exc))[:160]
        self.error(line, INVALID_JSON, f"not valid JSON: {message}")

    def read_jsonl(self, stream: BinaryIO) -> None:
        """Every line of a JSONL stream.

        This is the per-row hot loop, so a line already in the output form (nearly all of a
        well-made file) is validated, de-duplicated, split and written right here, with bound
        methods in locals and no Python call per line beyond the C-level ones; ``add`` does
        the same steps for anything else (and names its problems).
        """
        max_row = self.settings.max_row_bytes
        limit = max_row + 1
        readline = stream.readline
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        output_form, dumps, digest_of = _output_form, _dumps, xxhash.xxh3_128_intdigest
        remember = self.seen.setdefault
        test_below = self.test_below
        write_train, write_test = self.train.write, self.test.write
        messages_batch, chars_batch = self.messages.batch, self.chars.batch
        tokens_wanted = self.token_counter is not None
        observe = self.quality.observe if self.quality is not None else None
        batch_size = Distribution.BATCH
        line = self.lines
        try:
            while raw := readline(limit):
                line += 1
                if len(raw) == limit and raw[-1:] != b"\n":
                    skipped = len(raw)
                    while raw and not raw.endswith(b"\n"):  # skip the rest of the line in bounded pieces
                        raw = readline(limit)
                        skipped += len(raw)
                    self.error(line, LINE_TOO_LONG, f"line is {skipped} bytes, more than the {max_row} allowed (MAX_ROW_BYTES)")
                    continue
                if line == 1 and raw.startswith(_UTF8_BOM):
                    raw = raw[3:]
                if raw.isspace():
                    self.blank += 1
                    continue
                try:
                    obj = loads(raw)
                except decode_error as exc:
                    self.bad_json(line, raw, exc)
                    continue
                fast = output_form(obj)
                if fast is None or (tokens_wanted and self.tokens.count + len(self.tokens.batch) < TOKEN_SAMPLE):
                    self.add(line, obj, raw)
                    continue
                _, roles, contents = fast
                encoded = dumps((roles, contents))
                digest = digest_of(encoded)  # = conversation_digest(roles, contents)
                first = remember(digest, line)
                if first != line:
                    self.error(line, DUPLICATE, f"same conversation as line {first}")
                    continue
                if observe is not None:
                    scanned = observe(line, roles, contents, encoded)  # the gate scans the digest's bytes
                    if scanned is not contents:  # redacted: rebuilt from the redacted contents
                        contents = scanned
                        raw = b"".join((b'{"prompt":', dumps(obj["prompt"]), b',"prompt_id":', dumps(obj["prompt_id"]),
                                        b',"messages":', dumps([{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]),
                                        b"}\n"))
                if raw[-1:] != b"\n" or raw[-2:] == b"\r\n":
                    raw = _output_line(raw)
                if digest < test_below:
                    write_test(raw)
                    self.n_test += 1
                else:
                    write_train(raw)
                    self.last_train = raw
                    self.n_train += 1
                messages_batch.append(len(roles))
                chars_batch.append(sum(map(len, contents)))
                if len(chars_batch) >= batch_size:
                    self.messages.flush()
                    self.chars.flush()
        finally:
            self.lines = line  # also when a corrupt gzip stops the loop: it is reported at the next line

    def read_parquet(self, path: Path, budget: DecodedBudget) -> None:
        """Every row of a parquet file, never decoding more than the limits allow.

        Before anything is decoded, the footer's column chunk sizes are checked (decoded total,
        decoded/raw ratio, one column chunk). Text columns are read dictionary-encoded, so a
        dictionary value repeated in many rows (3 MiB x 256 rows from 1.7 KB of file) stays one
        value; each row's decoded size is computed from the Arrow buffers (lengths, offsets,
        dictionary indices) before it becomes Python objects: a row above ``MAX_ROW_BYTES`` is
        reported and skipped, the rest is materialised in slices of at most ``PARQUET_SLICE_BYTES``
        and charged to the budget (the same ratio and total limits as gzip).
        """
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path, buffer_size=READ_BUFFER_BYTES)
        raw_size = max(path.stat().st_size, 1)
        _check_parquet_metadata(parquet.metadata, self.settings, budget, raw_size)
        text_columns = [parquet.schema.column(i).path for i in range(len(parquet.schema))
                        if parquet.schema.column(i).physical_type == "BYTE_ARRAY"]
        parquet = pq.ParquetFile(path, buffer_size=READ_BUFFER_BYTES, read_dictionary=text_columns)
        max_row = self.settings.max_row_bytes
        row = 0
        # One row group at a time: each has its own dictionaries, and Arrow cannot return a
        # nested dictionary column whose dictionary changes within one batch.
        batches = (batch for group in range(parquet.metadata.num_row_groups)
                   for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group]))
        for batch in batches:
            sizes = _row_bytes_of_batch(batch)
            budget.charge(int(sizes.sum()))  # the whole batch, before any of it is decoded
            start = 0
            n = len(sizes)
            while start < n:
                end, total = start, 0
                while end < n and sizes[end] <= max_row and (end == start or total + sizes[end] <= PARQUET_SLICE_BYTES):
                    total += int(sizes[end])
                    end += 1
                if end == start:  # one row over the cap: reported, never decoded
                    row += 1
                    self.error(row, LINE_TOO_LONG, f"row decodes to {int(sizes[start])} bytes, more than the {max_row} allowed (MAX_ROW_BYTES)")
                    start += 1
                    self.lines = row
                    continue
                for obj in batch.slice(start, end - start).to_pylist():
                    row += 1
                    self.add(row, obj)
                self.lines = row
                start = end

    def forecast(self, tokens: dict[str, Any] | None) -> dict[str, Any]:
        """The cost forecast of training on this file's train split (shared.datasets.quality.cost_forecast)."""
        from shared.datasets.quality import cost_forecast

        chars = self.chars.summary()
        mean_chars = chars["mean"] if chars else 0.0
        return cost_forecast(self.settings, conversations=self.n_train, characters=int(mean_chars * self.n_train),
                             tokens_per_conversation=tokens["mean"] if tokens else None)

    def ensure_test_split(self) -> None:
        """A tiny dataset can hash every conversation into train: move the last one to test.

        Deterministic (depends only on the content), so re-preparing gives the same split.
        """
        if self.n_test or self.n_train < 2:
            return
        last = self.last_train
        self.train.flush()
        self.train.seek(-len(last), io.SEEK_END)
        self.train.truncate()
        self.test.write(last)
        self.n_train -= 1
        self.n_test += 1

    def report(self, source: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
        s = self.settings
        invalid = sum(self.invalid.values())
        considered = self.valid + invalid + self.duplicates
        share = invalid / considered if considered else 0.0
        reasons: list[str] = []
        if self.unreadable:
            reasons.append(f"the file could not be read to the end: {self.unreadable}")
        if self.refused:
            reasons.append(f"reading stopped: {self.refused}")
        if self.valid < s.min_valid_examples:
            reasons.append(f"{self.valid} valid conversations, fewer than the minimum of {s.min_valid_examples}")
        if share > s.max_invalid_share:
            reasons.append(f"{invalid} of {considered} lines are invalid ({share:.1%}), above the maximum of {s.max_invalid_share:.1%}")
        if self.valid and (not self.n_train or not self.n_test):
            reasons.append("too few conversations for both a train and a test split")
        quality = self.quality.report() if self.quality is not None else None
        if self.quality is not None:
            reasons.extend(self.quality.decision_reasons())
        accepted = not reasons
        if accepted:
            reasons = [f"{self.valid} valid conversations (minimum {s.min_valid_examples})",
                       f"{share:.1%} invalid lines (maximum {s.max_invalid_share:.1%})"]
        warnings = sorted(self.warnings.values(), key=lambda w: w["first_line"])
        tokens = self.tokens.summary()
        return {
            "source": source,
            "counts": {
                "lines": self.lines,
                "blank_lines": self.blank,
                "valid": self.valid,
                "invalid": invalid,
                "invalid_by_kind": dict(sorted(self.invalid.items())),
                "duplicates": self.duplicates,
                "train": self.n_train,
                "test": self.n_test,
            },
            "errors": self.errors,
            "errors_omitted": self.errors_omitted,
            "warnings": warnings,
            "warnings_omitted": self.warnings_omitted,
            "stats": {
                "messages_per_conversation": self.messages.summary(),
                "characters_per_conversation": self.chars.summary(),
                "tokens_per_conversation": tokens,
                "tokens_note": (f"estimated on the first {self.tokens.count} valid conversations (content only, no chat template)"
                                if tokens else "no tokenizer configured: token counts not computed"),
            },
            "decision": {"accepted": accepted, "reasons": reasons},
            "quality": quality,
            "forecast": self.forecast(tokens),
            "policy": {"min_valid_examples": s.min_valid_examples, "max_invalid_share": s.max_invalid_share,
                       "test_fraction": s.test_fraction},
            "elapsed_s": round(elapsed_s, 3),
        }


def _check_parquet_metadata(metadata: Any, s: Settings, budget: DecodedBudget, raw_size: int) -> None:
    """Refuse a parquet file from its footer alone, before any page is decoded."""
    total = 0
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            size = int(column.total_uncompressed_size)
            total += size
            if size > s.max_parquet_column_chunk_bytes:
                raise InputTooLarge(f"parquet column {column.path_in_schema!r} of row group {g} decodes to {_mib(size)}, "
                                    f"more than the {_mib(s.max_parquet_column_chunk_bytes)} allowed "
                                    "(MAX_PARQUET_COLUMN_CHUNK_BYTES: write smaller row groups)")
    if total > s.max_decoded_bytes:
        raise InputTooLarge(f"the parquet file's columns decode to {_mib(total)}, more than {_mib(s.max_decoded_bytes)} "
                            "(MAX_DECODED_BYTES)")
    if total > EXPANSION_FLOOR_BYTES and total > s.max_expansion_ratio * raw_size:
        raise InputTooLarge(f"the parquet file expands more than {s.max_expansion_ratio:g}x when decoded (MAX_EXPANSION_RATIO): "
                            f"{_mib(raw_size)} of file, {_mib(total)} of columns ({total / raw_size:.0f}x); "
                            "refused as a decompression bomb")


def _row_bytes_of_batch(batch: Any) -> Any:
    """Decoded bytes of each row of an Arrow record batch (numpy int64), from its buffers alone."""
    import numpy as np

    sizes = np.zeros(batch.num_rows, dtype=np.int64)
    for column in batch.columns:
        sizes += _row_bytes(column)
    return sizes


def _row_bytes(array: Any) -> Any:
    """Decoded bytes per element of an Arrow array: string lengths, dictionary values by index,
    list children summed by offsets, struct fields summed, fixed-width types their width.
    Nothing is materialised: a dictionary value of 3 MiB used by 256 rows is measured once.
    Read from the buffers with numpy alone (``to_numpy``/compute would import pandas: +50 MB)."""
    import numpy as np
    import pyarrow as pa

    kind = array.type
    n = len(array)
    if pa.types.is_dictionary(kind):
        value_sizes = _row_bytes(array.dictionary)
        if not len(value_sizes):
            return np.zeros(n, dtype=np.int64)
        indices = _buffer_ints(array.indices, 1, array.indices.type.bit_width // 8, n)
        # a null slot's index is undefined: clipped into range (counts a value: never less than the truth)
        return value_sizes[np.clip(indices, 0, len(value_sizes) - 1)]
    if pa.types.is_string(kind) or pa.types.is_binary(kind) or pa.types.is_large_string(kind) \
            or pa.types.is_large_binary(kind):
        width = 8 if (pa.types.is_large_string(kind) or pa.types.is_large_binary(kind)) else 4
        return np.diff(_buffer_ints(array, 1, width, n + 1))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        offsets = _buffer_ints(array, 1, 8 if pa.types.is_large_list(kind) else 4, n + 1)
        child = _row_bytes(array.values)
        cumulative = np.concatenate(([0], np.cumsum(child)))
        return cumulative[offsets[1:]] - cumulative[offsets[:-1]] + 8 * (offsets[1:] - offsets[:-1])
    if pa.types.is_struct(kind):
        sizes = np.zeros(n, dtype=np.int64)
        for field in array.flatten():
            sizes += _row_bytes(field)
        return sizes
    try:
        width = kind.bit_width // 8
    except (ValueError, AttributeError):  # a type without a fixed width not handled above (map, union...)
        width = 8
    return np.full(n, max(width, 1), dtype=np.int64)


def _buffer_ints(array: Any, buffer_index: int, width: int, count: int) -> Any:
    """``count`` integers of ``width`` bytes from one of an Arrow array's buffers, from its slice offset."""
    import numpy as np

    buffer = array.buffers()[buffer_index]
    dtype = {1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}[width]
    if buffer is None or count == 0:
        return np.zeros(count, dtype=np.int64)
    return np.frombuffer(buffer, dtype=dtype, count=count, offset=array.offset * width).astype(np.int64)


def prepare_stream(source: BinaryIO, fmt: str, out_dir: Path, settings: Settings | None = None, *,
                   source_name: str = "", token_counter: Callable[[list[dict[str, str]]], int] | None = None,
                   collection: str | None = None, held_out: Iterable[list[dict[str, str]]] | None = None,
                   quality_gate: bool = True) -> PreparedData:
    """Prepare a raw binary stream of ``fmt`` into ``out_dir``/{train,test}.jsonl.

    The stream is read once; its SHA-256 (of the raw bytes, compressed or not) identifies the
    content. Bad data never raises: it ends up in the report. The data quality gate
    (:mod:`shared.datasets.quality`, ``quality_gate``) runs in the same pass under the
    ``DATA_POLICY`` of ``collection``, checking leakage against ``held_out`` when given. Errors of the stream itself
    (network, disk) do raise, so callers can retry.
    """
    s = settings or get_settings()
    if fmt not in FORMATS.values():
        raise ValueError(f"unsupported format {fmt!r}")
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    train_path, test_path = out_dir / "train.jsonl", out_dir / "test.jsonl"
    hashing = HashingReader(source)
    with hashing, open(train_path, "w+b", buffering=WRITE_BUFFER_BYTES) as train, \
            open(test_path, "wb", buffering=WRITE_BUFFER_BYTES) as test:
        scan = None
        if quality_gate:
            from shared.datasets.quality import QualityScan

            scan = QualityScan(s, collection, held_out=held_out)
        prep = _Preparation(s, train, test, token_counter, scan)
        budget = DecodedBudget(s, lambda: hashing.size)
        if fmt == "parquet":
            # pyarrow needs a seekable file: spool the stream to disk (hashing it on the way).
            spool = out_dir / ".source.parquet"
            try:
                with open(spool, "wb") as f:
                    chunk = bytearray(READ_BUFFER_BYTES)
                    view = memoryview(chunk)
                    while n := hashing.readinto(chunk):
                        f.write(view[:n])
                _read_guarded(prep, lambda: prep.read_parquet(spool, budget))
            finally:
                spool.unlink(missing_ok=True)
        else:
            buffered = io.BufferedReader(hashing, READ_BUFFER_BYTES)
            decoded: BinaryIO = gzip.GzipFile(fileobj=buffered, mode="rb") if fmt == "jsonl.gz" else buffered  # type: ignore[assignment]
            reader: BinaryIO = io.BufferedReader(CountingReader(decoded, budget), READ_BUFFER_BYTES)  # type: ignore[arg-type]
            _read_guarded(prep, lambda: prep.read_jsonl(reader))
        # Whatever the parser did not consume (after a corrupt gzip member) still counts in the hash.
        hashing.drain()
        prep.ensure_test_split()
        source_info = {"name": source_name, "format": fmt, "bytes": hashing.size, "sha256": hashing.hexdigest(),
                       "line_unit": "row" if fmt == "parquet" else "line"}
        report = prep.report(source_info, time.perf_counter() - started)
    log.info("prepared %s: %d lines, %d valid, %d invalid, %d duplicates, accepted=%s", source_name or fmt,
             prep.lines, prep.valid, sum(prep.invalid.values()), prep.duplicates, report["decision"]["accepted"])
    return PreparedData(report, source_info["sha256"], hashing.size, train_path, test_path)


def _read_guarded(prep: _Preparation, read: Callable[[], None]) -> None:
    """Run the reader; a corrupt file (bad gzip, bad parquet) is a data problem, not a crash."""
    try:
        read()
    except InputTooLarge as exc:
        prep.refused = str(exc)
        prep.error(prep.lines + 1, TOO_LARGE, str(exc))
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        _unreadable(prep, f"corrupt or truncated gzip data ({exc})")
    except Exception as exc:
        if type(exc).__module__.startswith("pyarrow"):
            _unreadable(prep, f"unreadable parquet ({exc})")
        else:
            raise


def _unreadable(prep: _Preparation, message: str) -> None:
    prep.unreadable = message
    prep.error(prep.lines + 1, UNREADABLE_FILE, message)


def prepare_file(path: Path, out_dir: Path, settings: Settings | None = None, *,
                 token_counter: Callable[[list[dict[str, str]]], int] | None = None, collection: str | None = None,
                 held_out: Iterable[list[dict[str, str]]] | None = None, quality_gate: bool = True) -> PreparedData:
    """Prepare a local file into ``out_dir`` (train.jsonl, test.jsonl, report.json)."""
    fmt = detect_format(path.name)
    if fmt is None:
        raise ValueError(f"{path.name}: not a chat data file (expected {', '.join(FORMATS)})")
    with open(path, "rb", buffering=0) as f:
        prepared = prepare_stream(f, fmt, out_dir, settings, source_name=path.name, token_counter=token_counter,  # type: ignore[arg-type]
                                  collection=collection, held_out=held_out, quality_gate=quality_gate)
    (out_dir / "report.json").write_bytes(orjson.dumps(prepared.report, option=orjson.OPT_INDENT_2))
    return prepared


def tokenizer_counter(tokenizer_file: str) -> Callable[[list[dict[str, str]]], int]:
    """Token counter from a Hugging Face ``tokenizer.json`` (``tokenizers`` imported only here)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_file)

    def count(messages: list[dict[str, str]]) -> int:
        return sum(len(e.ids) for e in tokenizer.encode_batch([m["content"] for m in messages], add_special_tokens=False))

    return count


def iter_errors(report: dict[str, Any]) -> Iterator[str]:
    for err in report.get("errors", []):
        yield f"line {err['line']}: {err['kind']}: {err['message']}"


def cli_prepare(args: Any) -> int:
    """``python -m shared.cli prepare INPUT --out-dir DIR``: 0 accepted, 2 rejected, 1 unusable input."""
    path = Path(args.input)
    out_dir = Path(args.out_dir)
    quiet = getattr(args, "quiet", False)
    if not path.is_file():
        print(f"{path}: no such file", file=sys.stderr)
        return 1
    if detect_format(path.name) is None:
        print(f"{path.name}: not a chat data file (expected {', '.join(FORMATS)})", file=sys.stderr)
        return 1
    tokenizer = getattr(args, "tokenizer", None)
    counter = tokenizer_counter(tokenizer) if tokenizer else None
    prepared = prepare_file(path, out_dir, get_settings(), token_counter=counter)
    report = prepared.report
    if not quiet:
        print("\n".join(report_summary(path.name, report)))
        print(f"wrote {out_dir / 'train.jsonl'}, {out_dir / 'test.jsonl'}, {out_dir / 'report.json'}")
    return 0 if prepared.accepted else 2


def report_summary(name: str, report: dict[str, Any]) -> list[str]:
    """A report for a terminal: counts, invalid lines by kind, the first errors, warnings, the decision
    (``prepare`` and ``report`` print it)."""
    c = report["counts"]
    lines = [f"{name}: {c['lines']} lines, {c['valid']} valid, {c['invalid']} invalid, "
             f"{c['duplicates']} duplicates, {c['blank_lines']} blank -> train {c['train']}, test {c['test']}"]
    lines += [f"  {kind}: {n}" for kind, n in c["invalid_by_kind"].items()]
    lines += [f"  {text}" for text in list(iter_errors(report))[:10]]
    shown = min(10, len(report["errors"]))
    more = len(report["errors"]) - shown + report["errors_omitted"]
    if more:
        lines.append(f"  ... and {more} more (see report.json)")
    lines += [f"  warning: {w['message']} ({w['count']} times, first on line {w['first_line']})" for w in report["warnings"][:5]]
    decision = "ACCEPTED" if report["decision"]["accepted"] else "REJECTED"
    lines.append(f"{decision}: " + "; ".join(report["decision"]["reasons"]))
    return lines
