"""Chat data preparation: stream a file, validate every line, normalise, de-duplicate, split, report.

Input: one conversation per line in the ultrachat_200k schema (:mod:`.schema`) as ``.jsonl``,
``.jsonl.gz`` or ``.parquet`` (rows instead of lines). Output: ``train.jsonl`` and ``test.jsonl``
in the schema the ``chat_completion_pipeline`` component reads (the same three keys, nothing
else) and a report (counts, every bad line with its 1-based number, warnings, length statistics,
decision).

Memory stays flat whatever the file size: lines are read one at a time through a 1 MiB buffer
(a line longer than ``MAX_ROW_BYTES`` is reported, not held; all the limits are in
:mod:`.upload_limits`), outputs are written as they go, and statistics are histograms
(:mod:`.distribution`). The one thing that grows is the de-duplication index: one 128-bit digest
and a line number per distinct conversation (about 130 bytes each, so ~27 MB for
ultrachat_200k's 208k train conversations).

The same digest (xxh3-128 of the normalised conversation, see
:func:`shared.datasets.digest.conversation_digest`) is the de-duplication key and the split
bucket, so a line costs one canonical serialisation and one hash. Lines already in the output
form take a fast path in ``_Preparation.read_jsonl`` and are written through byte for byte.
Parquet is read in batches of ``PARQUET_BATCH_ROWS`` with text columns kept dictionary-encoded.

Everything here works on local files and binary streams; storage and the ledger live in
``shared.datasets.intake``. Nothing heavy is imported at module level (pyarrow only for parquet).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import re
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import xxhash

from shared.datasets.distribution import Distribution
from shared.datasets.report import preparation_report
from shared.datasets.schema import (
    DUPLICATE,
    INVALID_JSON,
    INVALID_UTF8,
    LINE_TOO_LONG,
    TOO_LARGE,
    UNREADABLE_FILE,
    LineError,
    normalise_conversation,
    output_form,
    output_line,
    short_repr,
)
from shared.datasets.upload_limits import (
    CountingReader,
    DecodedBudget,
    InputTooLarge,
    check_parquet_metadata,
    row_bytes_of_batch,
)
from shared.datasets.uploads import FORMATS, READ_BUFFER_BYTES, HashingReader, detect_format
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Parquet rows are decoded (to Python objects) in slices of at most this many bytes.
PARQUET_SLICE_BYTES = 16 << 20
PARQUET_BATCH_ROWS = 64
WRITE_BUFFER_BYTES = 1 << 20
# Token statistics (when a tokenizer is given) are estimated on this many conversations.
TOKEN_SAMPLE = 1000
MAX_WARNING_KEYS = 50
_UTF8_BOM = b"\xef\xbb\xbf"
_JSON_POSITION = re.compile(r"line \d+ column (\d+) \(char \d+\)")
_dumps = orjson.dumps


def split_threshold(test_fraction: float) -> int:
    """The split rule: a conversation whose digest is below this goes to test, else to train.

    Depends only on the digest, so a conversation lands in the same split in any file and in
    any corpus built from files (``shared.datasets.corpus`` applies the same rule).
    """
    return int(test_fraction * (1 << 64)) << 64


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
                    "message": f"unknown {where} key {short_repr(key)} dropped from the output"}
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
            record = output_line(raw)  # already exactly the output form: passed through
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
        in_output_form, dumps, digest_of = output_form, _dumps, xxhash.xxh3_128_intdigest
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
                fast = in_output_form(obj)
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
                    raw = output_line(raw)
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
        check_parquet_metadata(parquet.metadata, self.settings, budget, raw_size)
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
            sizes = row_bytes_of_batch(batch)
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
        report = preparation_report(prep, source_info, time.perf_counter() - started)
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

