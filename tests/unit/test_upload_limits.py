"""Issue 26.1: no upload exhausts a worker. Decoded bytes are capped per row and per file for
every format, and a decoded/raw ratio above ``MAX_EXPANSION_RATIO`` is refused with its reason.

The two files of the review run in a child process whose peak RSS is measured (VmHWM): the
1.7 KB parquet of 256 dictionary-encoded 3 MiB rows (3,156 MiB before the fix) and the 815 KiB
gzip bomb (accepted as 800 MiB of training data before the fix).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scripts.make_sample_data import write_gzip_bomb, write_parquet_bomb
from shared.datasets import schema
from shared.datasets.preparation import prepare_file
from tests.support import make_settings

ROOT = Path(__file__).resolve().parents[2]
RSS_LIMIT_MB = 200

_CHILD = """
import json, re, sys
from pathlib import Path
from shared.datasets.preparation import prepare_file
from shared.settings import load_settings
prepared = prepare_file(Path(sys.argv[1]), Path(sys.argv[2]), load_settings(environ={}))
# VmHWM: this process's own peak RSS (ru_maxrss would carry the forking parent's over exec)
peak_kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
print(json.dumps({"report": prepared.report, "maxrss_mb": peak_kib / 1024}))
"""


def prepare_in_child(path: Path, out: Path) -> tuple[dict, float]:
    done = subprocess.run([sys.executable, "-c", _CHILD, str(path), str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result["report"], result["maxrss_mb"]


def conversation(i: int, answer: str | None = None) -> dict:
    return {"prompt": f"question {i}", "prompt_id": f"id-{i}", "messages": [
        {"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": answer or f"answer {i}"}]}


def test_parquet_of_dictionary_encoded_rows_is_refused_before_decoding_in_flat_memory(tmp_path: Path) -> None:
    bomb = write_parquet_bomb(tmp_path / "bomb.parquet")
    assert bomb.stat().st_size < 2500
    report, maxrss_mb = prepare_in_child(bomb, tmp_path / "out")
    assert not report["decision"]["accepted"]
    assert report["counts"]["invalid_by_kind"] == {schema.TOO_LARGE: 1}
    assert report["counts"]["valid"] == 0  # refused before any row became Python objects
    reason = report["decision"]["reasons"][0]
    assert "MAX_EXPANSION_RATIO" in reason and "decompression bomb" in reason, reason
    assert maxrss_mb < RSS_LIMIT_MB, f"peak RSS {maxrss_mb:.0f} MB"


def test_gzip_bomb_is_refused_at_the_ratio_in_flat_memory(tmp_path: Path) -> None:
    bomb = write_gzip_bomb(tmp_path / "bomb.jsonl.gz")
    assert bomb.stat().st_size < 900 * 1024
    report, maxrss_mb = prepare_in_child(bomb, tmp_path / "out")
    assert not report["decision"]["accepted"]
    assert report["counts"]["invalid_by_kind"] == {schema.TOO_LARGE: 1}
    reason = report["decision"]["reasons"][0]
    assert "MAX_EXPANSION_RATIO" in reason, reason
    # reading stopped near the limit: not 800 MiB of padded conversations
    assert report["counts"]["lines"] <= 12
    assert maxrss_mb < RSS_LIMIT_MB, f"peak RSS {maxrss_mb:.0f} MB"


def test_plain_parquet_bomb_is_refused_from_its_footer(tmp_path: Path) -> None:
    """Plain encoding and zstd: the footer's column chunk sizes give it away before any page is read."""
    path = tmp_path / "plain.parquet"
    big = "b" * (3 << 20)
    pq.write_table(pa.Table.from_pylist([conversation(i, big) for i in range(30)]), path, compression="zstd",
                   compression_level=22, use_dictionary=False)
    report = prepare_file(path, tmp_path / "o", make_settings()).report
    assert report["counts"]["invalid_by_kind"] == {schema.TOO_LARGE: 1}
    assert "parquet file expands" in report["errors"][0]["message"]
    assert report["errors"][0]["line"] == 1


def test_parquet_row_over_the_row_cap_is_reported_and_skipped(tmp_path: Path) -> None:
    path = tmp_path / "rows.parquet"
    rows = [conversation(i) for i in range(20)]
    rows[6] = conversation(6, "x" * 5000)
    pq.write_table(pa.Table.from_pylist(rows), path)
    report = prepare_file(path, tmp_path / "o", make_settings(MAX_ROW_BYTES="4096")).report
    assert [(e["line"], e["kind"]) for e in report["errors"]] == [(7, schema.LINE_TOO_LONG)]
    assert "MAX_ROW_BYTES" in report["errors"][0]["message"]
    assert report["counts"]["valid"] == 19 and report["decision"]["accepted"]


def test_parquet_column_chunk_over_its_cap_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "chunk.parquet"
    pq.write_table(pa.Table.from_pylist([conversation(i, "y" * 300 + str(i)) for i in range(20)]), path)
    report = prepare_file(path, tmp_path / "o", make_settings(MAX_PARQUET_COLUMN_CHUNK_BYTES="2048")).report
    assert report["counts"]["invalid_by_kind"] == {schema.TOO_LARGE: 1}
    assert "MAX_PARQUET_COLUMN_CHUNK_BYTES" in report["errors"][0]["message"]


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "parquet"])
def test_decoded_total_is_capped_for_every_format(tmp_path: Path, fmt: str) -> None:
    rows = [conversation(i, "z" * 200 + str(i)) for i in range(200)]
    path = tmp_path / f"c.{fmt}"
    body = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    if fmt == "jsonl":
        path.write_bytes(body)
    elif fmt == "jsonl.gz":
        path.write_bytes(gzip.compress(body))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=50)
    assert prepare_file(path, tmp_path / "ok", make_settings()).accepted
    report = prepare_file(path, tmp_path / "o", make_settings(MAX_DECODED_BYTES="16384")).report
    assert not report["decision"]["accepted"]
    assert report["counts"]["invalid_by_kind"].get(schema.TOO_LARGE) == 1
    assert any("MAX_DECODED_BYTES" in r for r in report["decision"]["reasons"])


def test_a_small_repetitive_file_is_not_refused_for_its_ratio(tmp_path: Path) -> None:
    """Below EXPANSION_FLOOR_BYTES the ratio is not enforced: a tiny, very compressible file is fine."""
    body = b"".join(json.dumps(conversation(i, "same answer " * 200)).encode() + b"\n" for i in range(50))
    path = tmp_path / "small.jsonl.gz"
    path.write_bytes(gzip.compress(body))
    assert len(body) / path.stat().st_size > 100
    assert prepare_file(path, tmp_path / "o", make_settings()).accepted
