"""The held-out eval set carved from a corpus by the conversation digest (shared.datasets.evalset)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from shared.datasets.corpus import build_corpus, corpus_id_for
from shared.datasets.digest import conversation_digest
from shared.datasets.evalset import HeldOut, eval_threshold, is_golden_blob, stream_order
from shared.datasets.preparation import split_threshold


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


def build(tmp_path: Path, name: str, *parts: list[dict], eval_max: int = 20, eval_fraction: float = 0.2,
          held: HeldOut | None = None, ids: list[str] | None = None):
    ids = ids or [f"d{k}" for k in range(len(parts))]
    return build_corpus([source(i, rows) for i, rows in zip(ids, parts, strict=True)], tmp_path / name, 0.1,
                        eval_fraction=eval_fraction, eval_max=eval_max, held_out=held)


def eligible(rows: list[dict], fraction: float = 0.2) -> list[dict]:
    top = eval_threshold(fraction)
    return [r for r in rows if digest(r) >= top]


def test_the_eval_set_is_the_first_eligible_conversations_up_to_the_cap_and_never_trained_on(tmp_path: Path) -> None:
    rows = [conversation(i) for i in range(400)]
    b = build(tmp_path, "c", rows, eval_max=20)
    train, test, held = keys(b.train_path), keys(b.test_path), keys(b.eval_path)
    assert b.eval == len(held) == 20 and b.rows == 400 == len(train) + len(test) + len(held)
    assert not held & train and not held & test and not train & test
    bucket = eligible(rows)
    assert b.eval_candidates == len(bucket) > 20
    assert held == {r["prompt_id"] for r in bucket[:20]}  # the earliest 20 in stream order
    assert {r["prompt_id"] for r in bucket[20:]} <= train  # the rest of the bucket is trained on
    low = split_threshold(0.1)
    assert all(digest(r) >= low for r in rows if r["prompt_id"] in held)  # test keeps its own split
    assert b.counts()["eval"] == 20 and b.counts()["eval_kept"] == 0
    assert b.held_out == HeldOut(0.2, 20, ("d0",), tuple(f"{digest(r):032x}" for r in bucket[:20]))


def test_a_later_batch_does_not_displace_the_set_an_earlier_model_was_judged_on(tmp_path: Path) -> None:
    first = [conversation(i) for i in range(300)]
    later = [conversation(i) for i in range(300, 900)]  # a bigger batch, with higher digests among it
    before = build(tmp_path, "before", first)
    assert before.eval == 20
    # even without the record, the stream order (the datasets the collection had first) keeps it
    after = build(tmp_path, "after", first, later)
    assert keys(after.eval_path) == keys(before.eval_path)
    assert not keys(after.eval_path) & keys(before.train_path)
    with_record = build(tmp_path, "record", first, later, held=before.held_out)
    assert keys(with_record.eval_path) == keys(before.eval_path) and with_record.eval_kept == 20
    # the training split excludes exactly the held-out conversations
    assert keys(with_record.train_path) | keys(with_record.test_path) == {r["prompt_id"] for r in first + later} - keys(before.eval_path)


def test_the_record_keeps_what_was_held_out_whatever_order_or_file_it_comes_in(tmp_path: Path) -> None:
    first = [conversation(i) for i in range(300)]
    later = [conversation(i) for i in range(300, 900)]
    before = build(tmp_path, "before", first, ids=["z-first"])
    # the new dataset sorts (and streams) first, and it repeats some held-out conversations
    repeated = [r for r in first if r["prompt_id"] in keys(before.eval_path)][:5]
    after = build(tmp_path, "after", repeated + later, first, ids=["a-later", "z-first"], held=before.held_out)
    assert keys(after.eval_path) == keys(before.eval_path) and after.eval_kept == 20
    assert after.held_out is not None and after.held_out.digests == before.held_out.digests  # full: nothing new
    assert after.held_out.datasets == ("z-first", "a-later")


def test_a_set_below_its_cap_fills_from_new_datasets_only(tmp_path: Path) -> None:
    first = [conversation(i) for i in range(60)]
    later = [conversation(i) for i in range(60, 400)]
    before = build(tmp_path, "before", first, ids=["d0"])
    assert 0 < before.eval < 20
    after = build(tmp_path, "after", first, later, ids=["d0", "d1"], held=before.held_out)
    assert keys(before.eval_path) < keys(after.eval_path) and after.eval == 20
    new = keys(after.eval_path) - keys(before.eval_path)
    assert new == {r["prompt_id"] for r in eligible(later)[:20 - before.eval]}
    # d0 retired: its held-out conversations leave with it, the free places go to a new dataset's
    # eligible conversations, never to d1's eligible ones that were trained on
    third = [conversation(i) for i in range(400, 700)]
    retired = build(tmp_path, "retired", later, third, ids=["d1", "d2"], held=after.held_out)
    assert keys(retired.eval_path) & keys(after.train_path) == set()
    assert new <= keys(retired.eval_path) and retired.eval == 20
    assert keys(retired.eval_path) - new <= {r["prompt_id"] for r in eligible(third)}
    assert retired.held_out is not None and set(after.held_out.digests) <= set(retired.held_out.digests)


def test_a_new_rule_starts_a_new_record(tmp_path: Path) -> None:
    rows = [conversation(i) for i in range(300)]
    before = build(tmp_path, "before", rows, eval_max=20)
    other = build(tmp_path, "other", rows, eval_max=10, held=before.held_out)
    assert other.eval_kept == 0 and other.held_out == HeldOut(0.2, 10, ("d0",), before.held_out.digests[:10])
    assert stream_order(["b", "c", "a"], HeldOut(0.2, 10, ("c", "gone"))) == ["c", "a", "b"]
    assert stream_order(["b", "a"], None) == ["a", "b"]


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
