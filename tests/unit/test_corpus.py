"""The corpus builder: union of prepared files, de-duplicated by conversation, split by digest."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from shared.datasets.collections import DEFAULT_COLLECTION, collection_of, model_name_for
from shared.datasets.corpus import CorpusError, build_corpus, corpus_id_for
from shared.datasets.preparation import prepare_file
from tests.support import make_settings


def conversation(i: int, answer: str = "arr!") -> dict:
    prompt = f"question number {i}?"
    return {"prompt": prompt, "prompt_id": f"id-{i}",
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"{i} {answer}"}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepare(tmp_path: Path, name: str, rows: list[dict]) -> tuple[Path, Path]:
    out = tmp_path / f"prepared-{name}"
    prepared = prepare_file(write_jsonl(tmp_path / f"{name}.jsonl", rows), out, make_settings())
    assert prepared.accepted, prepared.report["decision"]
    return out / "train.jsonl", out / "test.jsonl"


def sources(*datasets: tuple[str, tuple[Path, Path]]):
    for dataset_id, (train, test) in datasets:
        for path in (train, test):
            yield dataset_id, path.name, io.BytesIO(path.read_bytes())


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def messages_of(path: Path) -> set[str]:
    return {json.dumps(json.loads(line)["messages"]) for line in lines(path)}


def test_union_minus_cross_file_duplicates_each_conversation_in_its_own_split(tmp_path: Path) -> None:
    a = prepare(tmp_path, "a", [conversation(i) for i in range(0, 60)])
    b = prepare(tmp_path, "b", [conversation(i) for i in range(40, 100)])  # 20 overlap with a
    c = prepare(tmp_path, "c", [conversation(i) for i in range(90, 130)])  # 10 overlap with b
    build = build_corpus(sources(("a", a), ("b", b), ("c", c)), tmp_path / "corpus", 0.1)
    assert build.rows == 130 and build.duplicates == 30
    assert build.per_dataset == {"a": {"rows": 60, "duplicates": 0}, "b": {"rows": 40, "duplicates": 20},
                                 "c": {"rows": 30, "duplicates": 10}}
    train, test = messages_of(build.train_path), messages_of(build.test_path)
    assert len(lines(build.train_path)) + len(lines(build.test_path)) == 130
    assert not train & test
    # the split of every conversation is the one a single-file preparation gives it
    whole = prepare(tmp_path, "whole", [conversation(i) for i in range(130)])
    assert train == messages_of(whole[0]) and test == messages_of(whole[1])
    # and each file's own split agrees with the corpus' for its conversations
    for part_train, part_test in (a, b, c):
        assert messages_of(part_train) <= train and messages_of(part_test) <= test


def test_the_split_does_not_depend_on_what_else_is_in_the_corpus_or_the_order(tmp_path: Path) -> None:
    a = prepare(tmp_path, "a", [conversation(i) for i in range(0, 80)])
    b = prepare(tmp_path, "b", [conversation(i) for i in range(60, 140)])
    alone = build_corpus(sources(("a", a)), tmp_path / "alone", 0.1)
    both = build_corpus(sources(("b", b), ("a", a)), tmp_path / "both", 0.1)
    assert messages_of(alone.test_path) <= messages_of(both.test_path)
    assert messages_of(alone.train_path) <= messages_of(both.train_path)


def test_the_same_sources_give_the_same_bytes(tmp_path: Path) -> None:
    a = prepare(tmp_path, "a", [conversation(i) for i in range(50)])
    one = build_corpus(sources(("a", a)), tmp_path / "one", 0.1)
    two = build_corpus(sources(("a", a)), tmp_path / "two", 0.1)
    assert one.train_path.read_bytes() == two.train_path.read_bytes()
    assert one.test_path.read_bytes() == two.test_path.read_bytes()


def test_a_tiny_corpus_still_gets_a_test_conversation(tmp_path: Path) -> None:
    rows = [conversation(i) for i in range(200)]
    from shared.datasets.digest import conversation_digest
    from shared.datasets.preparation import split_threshold

    threshold = split_threshold(0.1)

    def digest(row: dict) -> int:
        return conversation_digest([m["role"] for m in row["messages"]], [m["content"] for m in row["messages"]])

    train_only = [r for r in rows if digest(r) >= threshold][:5]
    src = io.BytesIO("".join(json.dumps(r) + "\n" for r in train_only).encode())
    build = build_corpus([("a", "train.jsonl", src)], tmp_path / "tiny", 0.1)
    assert build.moved_to_test and (build.train, build.test) == (4, 1)
    lowest = min(train_only, key=digest)
    assert [json.loads(x) for x in lines(build.test_path)] == [lowest]
    assert len(lines(build.train_path)) == 4 and json.dumps(lowest) not in build.train_path.read_text()


def test_a_corrupt_prepared_file_names_dataset_file_and_line(tmp_path: Path) -> None:
    src = io.BytesIO((json.dumps(conversation(1)) + "\n{broken\n").encode())
    with pytest.raises(CorpusError, match=r"dataset a train\.jsonl line 2"):
        build_corpus([("a", "train.jsonl", src)], tmp_path / "bad", 0.1)


def test_corpus_id_is_the_set_of_datasets() -> None:
    assert corpus_id_for(["b", "a"], 0.1) == corpus_id_for(["a", "b", "a"], 0.1)
    assert corpus_id_for(["a", "b"], 0.1) != corpus_id_for(["a", "b", "c"], 0.1)
    assert corpus_id_for(["a"], 0.1) != corpus_id_for(["a"], 0.2)  # a different split is a different corpus


@pytest.mark.parametrize(("blob", "collection"), [
    ("support-bot/2026-12-01.jsonl", "support-bot"),
    ("Support Bot/day/2026-12-01.jsonl", "support-bot"),
    ("2026-12-01.jsonl", DEFAULT_COLLECTION),
    ("/labels/batch.parquet", "labels"),
    ("../../etc/x.jsonl", DEFAULT_COLLECTION),
    ("#?/x.jsonl", DEFAULT_COLLECTION),
])
def test_collection_is_the_first_folder(blob: str, collection: str) -> None:
    assert collection_of(blob) == collection


def test_model_name_per_collection_derived_or_overridden() -> None:
    s = make_settings(COLLECTION_MODEL_NAMES='{"labels": "labelling-ft"}')
    assert model_name_for(s, DEFAULT_COLLECTION) == s.model_name
    assert model_name_for(s, "support-bot") == f"{s.model_name}-support-bot"
    assert model_name_for(s, "labels") == "labelling-ft"


def test_bad_model_name_override_fails_fast() -> None:
    from shared.settings import SettingsError

    with pytest.raises(SettingsError, match=r"COLLECTION_MODEL_NAMES\['x'\]"):
        make_settings(COLLECTION_MODEL_NAMES='{"x": "has space"}')


def test_a_conversation_a_tiny_file_moved_to_test_goes_back_to_its_digest_split(tmp_path: Path) -> None:
    from shared.datasets.digest import conversation_digest
    from shared.datasets.preparation import split_threshold

    threshold = split_threshold(0.1)

    def digest(row: dict) -> int:
        return conversation_digest([m["role"] for m in row["messages"]], [m["content"] for m in row["messages"]])

    train_by_rule = [r for r in (conversation(i, "tiny") for i in range(300)) if digest(r) >= threshold][:10]
    tiny = prepare(tmp_path, "tiny", train_by_rule)  # preparation moves its last conversation to test
    moved = lines(tiny[1])
    assert len(moved) == 1
    big = prepare(tmp_path, "big", [conversation(i) for i in range(100)])
    build = build_corpus(sources(("big", big), ("tiny", tiny)), tmp_path / "corpus", 0.1)
    assert moved[0] in lines(build.train_path) and moved[0] not in lines(build.test_path)
