"""An upload as bytes: its format (from its name) and the streams it is read through.

``detect_format`` tells chat data from other blobs by suffix (``.jsonl``, ``.jsonl.gz``,
``.parquet``); ``ChunkStream`` turns a blob download's chunks into a readable stream and
``HashingReader`` computes the content identity (SHA-256 and size of the raw bytes) while
preparation reads them. What the bytes may decode to is bounded in :mod:`.upload_limits`.
"""

from __future__ import annotations

import hashlib
import io
import queue
import threading
from collections.abc import Iterable
from typing import Any, BinaryIO

# Suffix -> format. ".jsonl.gz" before ".jsonl"'s neighbours: matched by endswith.
FORMATS: dict[str, str] = {".jsonl.gz": "jsonl.gz", ".jsonl": "jsonl", ".parquet": "parquet"}

READ_BUFFER_BYTES = 1 << 20


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
