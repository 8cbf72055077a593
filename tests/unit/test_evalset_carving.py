"""The held-out eval set carved from a corpus by the conversation digest (shared.datasets.evalset)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from shared.datasets.chat_data import conversation_digest, split_threshold
from shared.datasets.corpus import build_corpus, corpus_id_for
from shared.datasets.evalset import eval_threshold, is_golden_blob


def conversation(i: int) -> dict:
    prompt = f"question number {i}?"
    return {"prompt": prompt, "prompt_id": f"id-{i}",
            "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": f"{i} arr!"}]}


def digest(row: dict) -> int:
    return conversation_digest([m["role"] for m in row["messages"]], [m["content"] for m in row["messages"]])


def source(dataset_id: str, rows: list[dict]) -> tuple[str, str, io.BytesIO]:
    return dataset_id, "train.jsonl", io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


def keys(path: Path | None) -> set[str]:
    assert path is not None
    return {json.loads(line)["prompt_id"] for line in path.read_text().splitlines()}


def build(tmp_path: Path, name: str, *parts: list[dict], eval_max: int = 20, eval_fraction: float = 0.2):
    return build_corpus([source(f"d{k}", rows) for k, rows in enumerate(parts)], tmp_path / name, 0.1,
                        eval_fraction=eval_fraction, eval_max=eval_max)


def test_the_eval_set_is_the_capped_top_of_the_digest_space_and_never_trained_on(tmp_path: Path) -> None:
    rows = [conversation(i) for i in range(400)]
    b = build(tmp_path, "c", rows, eval_max=20)
    train, test, held = keys(b.train_path), keys(b.test_path), keys(b.eval_path)
    assert b.eval == len(held) == 20 and b.rows == 400 == len(train) + len(test) + len(held)
    assert not held & train and not held & test and not train & test
    top = eval_threshold(0.2)
    bucket = sorted((r for r in rows if digest(r) >= top), key=digest, reverse=True)
    assert b.eval_candidates == len(bucket) > 20
    assert held == {r["prompt_id"] for r in bucket[:20]}  # the 20 highest digests
    assert {r["prompt_id"] for r in bucket[20:]} <= train  # the rest of the bucket is trained on
    low = split_threshold(0.1)
    assert all(digest(r) >= low for r in rows if r["prompt_id"] in held)  # test keeps its own split
    assert b.counts()["eval"] == 20


def test_a_growing_corpus_never_brings_back_what_an_earlier_model_trained_on(tmp_path: Path) -> None:
    first = [conversation(i) for i in range(300)]
    later = [conversation(i) for i in range(300, 900)]
    before = build(tmp_path, "before", first)
    after = build(tmp_path, "after", first, later)
    assert not keys(after.eval_path) & keys(before.train_path)
    # what stayed held out is the old set minus what new higher digests pushed out, and the same
    # conversation is in the same place whatever file or order it came in
    assert keys(after.eval_path) & keys(before.eval_path)
    swapped = build(tmp_path, "swapped", later, first)
    assert keys(swapped.eval_path) == keys(after.eval_path)
    assert keys(swapped.train_path) == keys(after.train_path)


def test_no_eval_set_when_off_and_the_corpus_id_follows_the_rule(tmp_path: Path) -> None:
    rows = [conversation(i) for i in range(100)]
    off = build_corpus([source("a", rows)], tmp_path / "off", 0.1)
    assert off.eval == 0 and off.eval_path is None and not (tmp_path / "off" / "eval.jsonl").exists()
    assert len(keys(off.train_path)) + len(keys(off.test_path)) == 100
    assert corpus_id_for(["a"], 0.1) == corpus_id_for(["a"], 0.1, 0.1, 0)  # as before there was an eval set
    assert corpus_id_for(["a"], 0.1, 0.1, 50) not in {corpus_id_for(["a"], 0.1), corpus_id_for(["a"], 0.1, 0.1, 60),
                                                      corpus_id_for(["a"], 0.1, 0.2, 50)}


def test_golden_files_are_the_eval_folder_of_a_collection() -> None:
    assert is_golden_blob("support-bot/eval/golden.jsonl")
    assert is_golden_blob("support-bot/EVAL/sub/golden.parquet")
    assert not is_golden_blob("eval/golden.jsonl")  # a collection named "eval"
    assert not is_golden_blob("support-bot/evaluation.jsonl")
    assert not is_golden_blob("support-bot/eval/")
