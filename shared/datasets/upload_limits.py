"""What an upload may decode to (issue 26.1): the limits preparation reads every format under.

Settings, all formats: a line or parquet row decoding to more than ``MAX_ROW_BYTES`` is
reported and skipped (by preparation); reading stops, and the file is rejected with a
``too_large`` error naming the limit, once the upload has decoded to more than
``MAX_DECODED_BYTES``, or to more than ``MAX_EXPANSION_RATIO`` x the raw bytes read so far (past
``EXPANSION_FLOOR_BYTES``): an 815 KiB gzip bomb stops after about 100 MiB, a 1.7 KB parquet of
256 dictionary-encoded 3 MiB rows before any row is decoded. Parquet is checked from its footer
first (column chunk sizes, ``check_parquet_metadata``), then each row's size is computed from the
Arrow buffers before decoding (``row_bytes_of_batch``). Nothing heavy is imported at module level
(numpy and pyarrow only for parquet).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any, BinaryIO

from shared.settings import Settings

# A line longer than MAX_ROW_BYTES (a setting, 8 MiB by default) is reported and skipped
# without being held in memory; the same cap applies to a parquet row's decoded size.
# The decoded/raw ratio (MAX_EXPANSION_RATIO) is enforced once this much is decoded, so a small,
# very repetitive file (a test fixture, a file of one system prompt) is never refused for it.
EXPANSION_FLOOR_BYTES = 64 << 20


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


def check_parquet_metadata(metadata: Any, s: Settings, budget: DecodedBudget, raw_size: int) -> None:
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


def row_bytes_of_batch(batch: Any) -> Any:
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
