"""Chat data preparation on local files: every error kind with its line, normalisation, dedup, split, report."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from shared.cli.commands import main as cli_main
from shared.datasets import preparation, schema
from shared.datasets.digest import conversation_digest
from shared.datasets.distribution import Distribution
from shared.datasets.preparation import prepare_file, prepare_stream
from shared.datasets.uploads import ChunkStream, detect_format
from tests.support import make_settings


def conv(i: int, *, system: bool = False, turns: int = 2) -> dict[str, Any]:
    messages = [{"role": "system", "content": "You are terse."}] if system else []
    for t in range(turns):
        messages.append({"role": "user", "content": f"question {i}.{t}"})
        messages.append({"role": "assistant", "content": f"answer {i}.{t}"})
    prompt = messages[1 if system else 0]["content"]
    return {"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "messages": messages}


def line(obj: Any) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


# Each bad line with the error kind it must be reported as.
BAD_LINES: list[tuple[bytes, str]] = [
    (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n', schema.INVALID_UTF8),
    (b'{"messages": [{"role": "user", "content": "x"}\n', schema.INVALID_JSON),
    (b"[1, 2, 3]\n", schema.NOT_AN_OBJECT),
    (line({"prompt": "hello"}), schema.MISSING_MESSAGES),
    (line({"messages": "hello"}), schema.MESSAGES_NOT_A_LIST),
    (line({"messages": []}), schema.EMPTY_MESSAGES),
    (line({"messages": ["hello", {"role": "assistant", "content": "hi"}]}), schema.MESSAGE_NOT_AN_OBJECT),
    (line({"messages": [{"content": "hello"}, {"role": "assistant", "content": "hi"}]}), schema.MISSING_ROLE),
    (line({"messages": [{"role": "bot", "content": "hello"}, {"role": "assistant", "content": "hi"}]}), schema.UNKNOWN_ROLE),
    (line({"messages": [{"role": ["user"], "content": "hello"}, {"role": "assistant", "content": "hi"}]}), schema.UNKNOWN_ROLE),
    (line({"messages": [{"role": "user"}, {"role": "assistant", "content": "hi"}]}), schema.MISSING_CONTENT),
    (line({"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "hi"}]}), schema.CONTENT_NOT_A_STRING),
    (line({"messages": [{"role": "user", "content": "  \n "}, {"role": "assistant", "content": "hi"}]}), schema.EMPTY_CONTENT),
    (line({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                        {"role": "assistant", "content": "c"}]}), schema.SYSTEM_NOT_FIRST),
    (line({"messages": [{"role": "system", "content": "a"}, {"role": "assistant", "content": "c"}]}), schema.NO_USER_TURN),
    (line({"messages": [{"role": "user", "content": "only a question"}]}), schema.NO_ASSISTANT_TURN),
    (line({"prompt": 3, "messages": conv(900)["messages"]}), schema.INVALID_PROMPT),
    (line({"prompt_id": 7, "messages": conv(901)["messages"]}), schema.INVALID_PROMPT_ID),
    (line(conv(0)), schema.DUPLICATE),  # conv(0) is the first good line
]


def test_every_error_kind_is_reported_with_its_line_number(tmp_path: Path) -> None:
    lines: list[bytes] = [line(conv(0))]
    expected: list[tuple[int, str]] = []
    for i, (bad, kind) in enumerate(BAD_LINES):
        lines.append(line(conv(100 + i)))  # a good line between bad ones
        lines.append(bad)
        expected.append((len(lines), kind))
        if i % 5 == 0:
            lines.append(b"\n")  # blank lines are skipped but still counted as lines
    lines += [line(conv(200 + i)) for i in range(10)]
    prepared = prepare_file(write(tmp_path / "chat.jsonl", lines), tmp_path / "out", make_settings(MAX_INVALID_SHARE="0.9"))

    report = prepared.report
    assert [(e["line"], e["kind"]) for e in report["errors"]] == expected
    assert all(e["message"] for e in report["errors"])
    counts = report["counts"]
    assert counts["lines"] == len(lines)
    assert counts["blank_lines"] == 4
    assert counts["duplicates"] == 1
    assert counts["invalid"] == len(BAD_LINES) - 1
    assert counts["valid"] == 1 + len(BAD_LINES) + 10
    assert counts["invalid_by_kind"][schema.UNKNOWN_ROLE] == 2
    assert counts["train"] + counts["test"] == counts["valid"]
    assert set(schema.ERROR_KINDS) - {e["kind"] for e in report["errors"]} == {schema.LINE_TOO_LONG, schema.UNREADABLE_FILE,
                                                                                    schema.TOO_LARGE}
    # the report on disk is the same report
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == json.loads(json.dumps(report))


def test_messages_name_the_problem(tmp_path: Path) -> None:
    lines = [line(conv(0)), BAD_LINES[8][0], BAD_LINES[0][0], BAD_LINES[1][0], line(conv(0))]
    report = prepare_file(write(tmp_path / "c.jsonl", lines), tmp_path / "o", make_settings()).report
    messages = [e["message"] for e in report["errors"]]
    assert "role 'bot'" in messages[0]
    assert "not UTF-8" in messages[1]
    assert messages[2].startswith("not valid JSON") and "line 2" not in messages[2]
    assert messages[3] == "same conversation as line 1"


def test_line_too_long_is_reported_without_holding_it(tmp_path: Path) -> None:
    long_line = line({"messages": [{"role": "user", "content": "x" * 5000}, {"role": "assistant", "content": "y"}]})
    lines = [line(conv(i)) for i in range(3)] + [long_line] + [line(conv(i)) for i in range(3, 12)]
    report = prepare_file(write(tmp_path / "c.jsonl", lines), tmp_path / "o", make_settings(MAX_ROW_BYTES="1024")).report
    assert [(e["line"], e["kind"]) for e in report["errors"]] == [(4, schema.LINE_TOO_LONG)]
    assert report["counts"]["valid"] == 12 and report["counts"]["lines"] == 13


def test_truncated_gzip_is_reported_not_raised(tmp_path: Path) -> None:
    data = gzip.compress(b"".join(line(conv(i)) for i in range(200)))
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    prepared = prepare_file(path, tmp_path / "o", make_settings())
    assert not prepared.accepted
    assert prepared.report["errors"][-1]["kind"] == schema.UNREADABLE_FILE
    assert prepared.report["errors"][-1]["line"] == prepared.counts["lines"] + 1
    assert any("could not be read to the end" in r for r in prepared.report["decision"]["reasons"])
    assert prepared.content_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_bom_crlf_and_missing_final_newline(tmp_path: Path) -> None:
    body = b"\xef\xbb\xbf" + b"".join(line(conv(i)).replace(b"\n", b"\r\n") for i in range(12))
    path = write(tmp_path / "c.jsonl", [body.rstrip(b"\r\n")])
    prepared = prepare_file(path, tmp_path / "o", make_settings())
    assert prepared.counts["valid"] == 12 and prepared.report["errors"] == []
    for out in (prepared.train_path, prepared.test_path):
        raw = out.read_bytes()
        assert b"\r" not in raw and raw.endswith(b"\n") and not raw.startswith(b"\xef\xbb\xbf")


def test_normalises_derives_and_warns(tmp_path: Path) -> None:
    odd = {"messages": [{"role": " System", "content": " be brief "}, {"role": "USER", "content": "\thi there\n", "name": "bob"},
                        {"role": "assistant", "content": "hello", "weight": 1}], "source": "crawl"}
    lines = [line(odd)] + [line(conv(i)) for i in range(11)]
    prepared = prepare_file(write(tmp_path / "c.jsonl", lines), tmp_path / "o", make_settings())
    rows = read_jsonl(prepared.train_path) + read_jsonl(prepared.test_path)
    row = next(r for r in rows if r["prompt"] == "hi there")
    assert set(row) == {"prompt", "prompt_id", "messages"}
    assert row["prompt_id"] == hashlib.sha256(b"hi there").hexdigest()
    assert row["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"},
                               {"role": "assistant", "content": "hello"}]
    warnings = {(w["where"], w["key"]): (w["count"], w["first_line"]) for w in prepared.report["warnings"]}
    assert warnings == {("conversation", "source"): (1, 1), ("message", "name"): (1, 1), ("message", "weight"): (1, 1)}
    # lines already in the output form pass through byte for byte (no re-serialising)
    written = set(prepared.train_path.read_bytes().splitlines(keepends=True)) | set(prepared.test_path.read_bytes().splitlines(keepends=True))
    assert {line(conv(i)) for i in range(11)} <= written


def test_duplicates_are_found_whatever_the_spelling(tmp_path: Path) -> None:
    base = conv(1)
    respelled = {"messages": [{"content": m["content"] + "  ", "role": m["role"].upper()} for m in base["messages"]],
                 "prompt_id": "other-id"}
    lines = [line(base)] + [line(conv(i)) for i in range(2, 13)] + [line(respelled), json.dumps(base, indent=None, separators=(",", ":")).encode() + b"\n"]
    report = prepare_file(write(tmp_path / "c.jsonl", lines), tmp_path / "o", make_settings()).report
    assert [(e["line"], e["kind"], e["message"]) for e in report["errors"]] == [
        (13, "duplicate", "same conversation as line 1"), (14, "duplicate", "same conversation as line 1")]
    assert report["counts"]["duplicates"] == 2 and report["counts"]["valid"] == 12


def test_split_is_deterministic_and_independent_of_order(tmp_path: Path) -> None:
    lines = [line(conv(i, turns=1 + i % 3, system=i % 4 == 0)) for i in range(2000)]
    a = prepare_file(write(tmp_path / "a.jsonl", lines), tmp_path / "a", make_settings())
    b = prepare_file(write(tmp_path / "b.jsonl", lines), tmp_path / "b", make_settings())
    assert a.train_path.read_bytes() == b.train_path.read_bytes()
    assert a.test_path.read_bytes() == b.test_path.read_bytes()
    shuffled = lines[:]
    random.Random(3).shuffle(shuffled)
    c = prepare_file(write(tmp_path / "c.jsonl", shuffled), tmp_path / "c", make_settings())
    assert set(c.test_path.read_bytes().splitlines()) == set(a.test_path.read_bytes().splitlines())
    assert 0.07 < a.counts["test"] / 2000 < 0.13  # TEST_FRACTION 0.1
    wider = prepare_file(write(tmp_path / "d.jsonl", lines), tmp_path / "d", make_settings(TEST_FRACTION="0.3"))
    assert 0.26 < wider.counts["test"] / 2000 < 0.34


def test_small_dataset_always_gets_a_test_example(tmp_path: Path) -> None:
    for n in (2, 5, 10, 12):
        prepared = prepare_file(write(tmp_path / f"s{n}.jsonl", [line(conv(i)) for i in range(n)]), tmp_path / f"o{n}",
                                make_settings(MIN_VALID_EXAMPLES="2"))
        assert prepared.counts["test"] >= 1 and prepared.counts["train"] == n - prepared.counts["test"]
        assert len(read_jsonl(prepared.train_path)) == prepared.counts["train"]
        assert len(read_jsonl(prepared.test_path)) == prepared.counts["test"]
        assert prepared.accepted


def test_mostly_bad_file_is_rejected(tmp_path: Path) -> None:
    lines = [line(conv(i)) for i in range(30)] + [b"not json\n"] * 20
    prepared = prepare_file(write(tmp_path / "c.jsonl", lines), tmp_path / "o", make_settings())
    assert not prepared.accepted
    assert prepared.report["decision"]["reasons"] == ["20 of 50 lines are invalid (40.0%), above the maximum of 20.0%"]


def test_too_few_valid_examples_is_rejected(tmp_path: Path) -> None:
    prepared = prepare_file(write(tmp_path / "c.jsonl", [line(conv(i)) for i in range(9)]), tmp_path / "o", make_settings())
    assert not prepared.accepted
    assert prepared.report["decision"]["reasons"] == ["9 valid conversations, fewer than the minimum of 10"]
    empty = prepare_file(write(tmp_path / "e.jsonl", []), tmp_path / "e", make_settings())
    assert not empty.accepted and empty.counts["lines"] == 0


def test_error_list_is_capped_and_the_rest_counted(tmp_path: Path) -> None:
    lines = [line(conv(i)) for i in range(100)] + [b"{\n"] * 7
    report = prepare_file(write(tmp_path / "c.jsonl", lines), tmp_path / "o", make_settings(REPORT_ERROR_CAP="3")).report
    assert [e["line"] for e in report["errors"]] == [101, 102, 103]
    assert report["errors_omitted"] == 4
    assert report["counts"]["invalid_by_kind"] == {"invalid_json": 7}


def test_gzip_parquet_and_jsonl_give_the_same_outputs(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [conv(i, turns=1 + i % 3) for i in range(50)]
    plain = prepare_file(write(tmp_path / "c.jsonl", [line(r) for r in rows]), tmp_path / "p", make_settings())
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(b"".join(line(r) for r in rows)))
    zipped = prepare_file(gz, tmp_path / "g", make_settings())
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
    parquet = prepare_file(tmp_path / "c.parquet", tmp_path / "q", make_settings())
    for other in (zipped, parquet):
        assert other.counts == plain.counts
        assert read_jsonl(other.train_path) == read_jsonl(plain.train_path)
        assert read_jsonl(other.test_path) == read_jsonl(plain.test_path)
    assert parquet.report["source"]["line_unit"] == "row"
    assert parquet.content_sha256 == hashlib.sha256((tmp_path / "c.parquet").read_bytes()).hexdigest()


def test_corrupt_parquet_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    prepared = prepare_file(path, tmp_path / "o", make_settings())
    assert not prepared.accepted
    assert prepared.report["errors"][0]["kind"] == schema.UNREADABLE_FILE


def test_streams_in_chunks_and_hashes_the_raw_bytes(tmp_path: Path) -> None:
    data = b"".join(line(conv(i)) for i in range(40))
    pieces = [data[i:i + 7] for i in range(0, len(data), 7)]  # chunk borders inside lines
    prepared = prepare_stream(ChunkStream(pieces), "jsonl", tmp_path / "o", make_settings(), source_name="x.jsonl")
    assert prepared.counts["valid"] == 40
    assert prepared.content_sha256 == hashlib.sha256(data).hexdigest()
    assert prepared.size_bytes == len(data)
    with pytest.raises(ValueError):
        prepare_stream(io.BytesIO(data), "csv", tmp_path / "p", make_settings())


def test_length_stats_and_tokens(tmp_path: Path) -> None:
    lines = [line(conv(i, turns=1 + i % 3)) for i in range(30)]
    path = write(tmp_path / "c.jsonl", lines)
    stats = prepare_file(path, tmp_path / "o", make_settings()).report["stats"]
    assert stats["messages_per_conversation"]["min"] == 2 and stats["messages_per_conversation"]["max"] == 6
    assert stats["messages_per_conversation"]["mean"] == 4.0
    assert stats["characters_per_conversation"]["min"] == len("question 0.0") + len("answer 0.0")
    assert stats["tokens_per_conversation"] is None and "no tokenizer" in stats["tokens_note"]
    words = prepare_file(path, tmp_path / "t", make_settings(),
                         token_counter=lambda msgs: sum(len(m["content"].split()) for m in msgs)).report["stats"]
    assert words["tokens_per_conversation"]["min"] == 4 and words["tokens_per_conversation"]["max"] == 12


def test_distribution_quantiles() -> None:
    d = Distribution()
    for v in range(1, 10001):
        d.add(v)
    s = d.summary()
    assert s is not None and s["min"] == 1 and s["max"] == 10000 and s["mean"] == 5000.5
    assert abs(s["p50"] - 5000) / 5000 < 0.07 and abs(s["p99"] - 9900) / 9900 < 0.07
    small = Distribution()
    for v in (2, 2, 4, 6):
        small.add(v)
    assert small.quantile(0.5) == 2 and small.quantile(1.0) == 6
    assert Distribution().summary() is None


def test_cli_exit_codes_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str], unit_settings) -> None:
    good = write(tmp_path / "good.jsonl", [line(conv(i)) for i in range(20)] + [b"oops\n"])
    assert cli_main(["prepare", str(good), "--out-dir", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    assert "21 lines, 20 valid, 1 invalid" in out and "line 21: invalid_json" in out and "ACCEPTED" in out
    assert {p.name for p in (tmp_path / "g").iterdir()} == {"train.jsonl", "test.jsonl", "report.json"}
    bad = write(tmp_path / "bad.jsonl", [b"oops\n"] * 5)
    assert cli_main(["prepare", str(bad), "--out-dir", str(tmp_path / "b")]) == 2
    assert "REJECTED" in capsys.readouterr().out
    assert cli_main(["prepare", str(tmp_path / "missing.jsonl"), "--out-dir", str(tmp_path / "m")]) == 1
    assert cli_main(["prepare", str(write(tmp_path / "x.csv", [b"a,b\n"])), "--out-dir", str(tmp_path / "x")]) == 1


def test_formats() -> None:
    assert detect_format("a/b/Chat.JSONL") == "jsonl"
    assert detect_format("x.jsonl.gz") == "jsonl.gz"
    assert detect_format("train-0000.parquet") == "parquet"
    assert detect_format("notes.txt") is None and detect_format("x.json") is None


def test_cli_token_counts_with_a_tokenizer_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], unit_settings) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    path = write(tmp_path / "c.jsonl", [line(conv(i, turns=1 + i % 2)) for i in range(12)])
    assert cli_main(["prepare", str(path), "--out-dir", str(tmp_path / "o"), "--tokenizer", str(tmp_path / "tokenizer.json")]) == 0
    tokens = json.loads((tmp_path / "o" / "report.json").read_text())["stats"]["tokens_per_conversation"]
    assert (tokens["min"], tokens["max"]) == (4, 8)  # "question i.t" + "answer i.t" per turn: 2 + 2 words


def respell(obj: dict[str, Any]) -> dict[str, Any]:
    """The same conversation in a form that needs normalising (the slow path): padded content,
    upper-case roles, content before role, an extra key, no prompt_id."""
    return {"messages": [{"content": f" {m['content']}\n", "role": m["role"].upper(), "weight": 1} for m in obj["messages"]],
            "prompt": obj["prompt"]}


def test_fast_and_slow_paths_give_the_same_outputs_and_split(tmp_path: Path) -> None:
    rows = [conv(i, turns=1 + i % 3, system=i % 5 == 0) for i in range(300)]
    fast = prepare_file(write(tmp_path / "f.jsonl", [line(r) for r in rows]), tmp_path / "f", make_settings())
    slow = prepare_file(write(tmp_path / "s.jsonl", [line(respell(r)) for r in rows]), tmp_path / "s", make_settings())
    mixed = prepare_file(write(tmp_path / "m.jsonl", [line(respell(r) if i % 2 else r) for i, r in enumerate(rows)]),
                         tmp_path / "m", make_settings())
    assert slow.report["warnings"] and not fast.report["warnings"]
    for other in (slow, mixed):
        assert other.counts == fast.counts
        assert read_jsonl(other.train_path) == read_jsonl(fast.train_path)
        assert read_jsonl(other.test_path) == read_jsonl(fast.test_path)
        assert other.report["stats"] == fast.report["stats"]


def test_statistics_are_exact_across_batches_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Distribution, "BATCH", 5)  # many folds, some in the middle of slow-path rows
    rows = [conv(i, turns=1 + i % 4) for i in range(37)]
    lines = [line(respell(r) if i % 3 == 0 else r) for i, r in enumerate(rows)]
    stats = prepare_file(write(tmp_path / "c.jsonl", lines), tmp_path / "o", make_settings()).report["stats"]
    n_messages = [len(r["messages"]) for r in rows]
    chars = [sum(len(m["content"]) for m in r["messages"]) for r in rows]
    got = stats["messages_per_conversation"]
    assert (got["min"], got["max"], got["total"], got["mean"]) == (2, 8, sum(n_messages), round(sum(n_messages) / 37, 1))
    got = stats["characters_per_conversation"]
    assert (got["min"], got["max"], got["total"]) == (min(chars), max(chars), sum(chars))


def test_tokens_are_sampled_then_lines_take_the_fast_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preparation, "TOKEN_SAMPLE", 5)
    counted: list[int] = []

    def counter(messages: list[dict[str, str]]) -> int:
        counted.append(len(messages))
        return sum(len(m["content"].split()) for m in messages)

    path = write(tmp_path / "c.jsonl", [line(conv(i)) for i in range(30)])
    report = prepare_file(path, tmp_path / "o", make_settings(), token_counter=counter).report
    assert len(counted) == 5 and "first 5 valid" in report["stats"]["tokens_note"]
    assert report["counts"]["valid"] == 30 and report["stats"]["characters_per_conversation"]["total"] == sum(
        len(f"question {i}.{t}") + len(f"answer {i}.{t}") for i in range(30) for t in range(2))


def test_split_follows_the_conversation_digest(tmp_path: Path) -> None:
    rows = [conv(i) for i in range(400)]
    prepared = prepare_file(write(tmp_path / "c.jsonl", [line(r) for r in rows]), tmp_path / "o", make_settings(TEST_FRACTION="0.25"))
    expected_test = {r["prompt"] for r in rows
                     if conversation_digest([m["role"] for m in r["messages"]], [m["content"] for m in r["messages"]]) >> 64
                     < int(0.25 * (1 << 64))}
    assert {r["prompt"] for r in read_jsonl(prepared.test_path)} == expected_test
