"""scripts/download_dataset.py on a local dataset built with `datasets` itself (the hub is unreachable)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from scripts import download_dataset
from shared.datasets.preparation import prepare_file


def _rows(n: int, split: str) -> list[dict]:
    rows = []
    for i in range(n):
        prompt = f"{split} question {i}: how do tides work?"
        rows.append({
            "prompt": prompt,
            "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
            # ultrachat's parquet stores message structs as (content, role)
            "messages": [{"content": prompt, "role": "user"}, {"content": f"answer {i}: the moon pulls the sea", "role": "assistant"},
                         {"content": "and the sun?", "role": "user"}, {"content": f"it helps too ({i})", "role": "assistant"}],
        })
    return rows


@pytest.fixture
def local_ultrachat(tmp_path: Path) -> Path:
    """A local folder laid out like the hub repository: data/<split>-00000-of-00001.parquet."""
    from datasets import Dataset

    root = tmp_path / "ultrachat_local"
    (root / "data").mkdir(parents=True)
    Dataset.from_list(_rows(40, "train_sft")).to_parquet(str(root / "data" / "train_sft-00000-of-00001.parquet"))
    Dataset.from_list(_rows(20, "test_sft")).to_parquet(str(root / "data" / "test_sft-00000-of-00001.parquet"))
    return root


def test_split_spec() -> None:
    assert download_dataset.split_spec("train_sft", 5) == "train_sft[:5%]"
    assert download_dataset.split_spec("train_sft", 2.5) == "train_sft[:2.5%]"
    assert download_dataset.split_spec("test_sft", 100) == "test_sft"
    with pytest.raises(ValueError):
        download_dataset.split_spec("train_sft", 0)


def test_downloads_percentage_of_each_split_as_jsonl(local_ultrachat: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc = download_dataset.main(["--dataset", str(local_ultrachat), "--dataset_split_pc", "50",
                                "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    train = [json.loads(line) for line in (out / "train_sft.jsonl").read_text().splitlines()]
    test = [json.loads(line) for line in (out / "test_sft.jsonl").read_text().splitlines()]
    assert len(train) == 20 and len(test) == 10  # the first 50% of 40 and 20 rows
    assert list(train[0]) == ["prompt", "prompt_id", "messages"]
    assert train[0]["prompt"] == "train_sft question 0: how do tides work?"
    assert train[0]["messages"][1] == {"content": "answer 0: the moon pulls the sea", "role": "assistant"}
    assert not list(out.glob("*.tmp"))
    # what it writes is what preparation accepts, line for line
    prepared = prepare_file(out / "train_sft.jsonl", tmp_path / "prepared")
    assert prepared.accepted and prepared.counts["valid"] == 20 and prepared.counts["invalid"] == 0


def test_single_parquet_file_is_the_train_split(local_ultrachat: Path, tmp_path: Path) -> None:
    data = download_dataset.load_split(str(local_ultrachat / "data" / "test_sft-00000-of-00001.parquet"), "ignored", 25,
                                       cache_dir=str(tmp_path / "cache"))
    assert data.num_rows == 5
    assert download_dataset.write_jsonl(data, tmp_path / "x.jsonl") == 5


def test_unreachable_dataset_fails_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = download_dataset.main(["--dataset", str(tmp_path / "no-such-folder" / "nothing"), "--out-dir", str(tmp_path / "o"),
                                "--cache-dir", str(tmp_path / "cache")])
    assert rc == 1
    assert "cannot load" in capsys.readouterr().err


def test_rows_without_messages_are_refused() -> None:
    with pytest.raises(ValueError, match="messages"):
        list(download_dataset.to_chat_rows([{"prompt": "x"}]))


@pytest.mark.storage
def test_upload_puts_the_train_split_in_the_chat_data_container(local_ultrachat: Path, tmp_path: Path, storage_settings) -> None:
    from shared.storage import blob_service

    out = tmp_path / "out"
    rc = download_dataset.main(["--dataset", str(local_ultrachat), "--dataset_split_pc", "10", "--splits", "train_sft",
                                "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--upload"])
    assert rc == 0
    container = blob_service(storage_settings).get_container_client(storage_settings.chat_data_container)
    names = [b.name for b in container.list_blobs()]
    assert names == ["ultrachat_local-train_sft-10pc.jsonl"]
    assert container.download_blob(names[0]).readall() == (out / "train_sft.jsonl").read_bytes()
