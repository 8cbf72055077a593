"""Dataset ids from untrusted blob names: never a path escape, always a valid key, stable per content."""

from __future__ import annotations

import hashlib
import re

import pytest

from shared.datasets.intake import dataset_id_for, dataset_prefix
from shared.ledger import check_key

SHA = hashlib.sha256(b"content").hexdigest()
OTHER = hashlib.sha256(b"changed").hexdigest()


@pytest.mark.parametrize("name", [
    "../../etc/passwd.jsonl",
    "/absolute/path/data.jsonl",
    "..\\..\\windows\\system32\\x.jsonl",
    "evil\x00name\x1f\x7f.jsonl",
    "....jsonl",
    ".jsonl",
    "datasets/other-id/train.jsonl",
    "Ünïcödé dätä 東京.JSONL.GZ",
    "a" * 5000 + ".parquet",
    "?#%&=+ .jsonl",
])
def test_untrusted_names_give_safe_ids(name: str) -> None:
    dataset_id = dataset_id_for(name, SHA)
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", dataset_id), dataset_id
    assert dataset_id.endswith("-" + SHA[:16]) and len(dataset_id) <= 48 + 13 + 17
    assert check_key(dataset_id) == dataset_id
    prefix = dataset_prefix(dataset_id)
    assert prefix.count("/") == 2 and ".." not in prefix and "\\" not in prefix


def test_ids_are_readable_and_distinguish_content() -> None:
    name_hash = hashlib.sha256(b"team-a/Chat Data 2024.jsonl").hexdigest()[:12]
    assert dataset_id_for("team-a/Chat Data 2024.jsonl", SHA) == f"team-a-chat-data-2024-{name_hash}-{SHA[:16]}"
    assert re.fullmatch(rf"dataset-[0-9a-f]{{12}}-{SHA[:16]}", dataset_id_for("....jsonl", SHA))
    assert dataset_id_for("x.jsonl", SHA) == dataset_id_for("x.jsonl", SHA)
    assert dataset_id_for("x.jsonl", SHA) != dataset_id_for("x.jsonl", OTHER)
    assert dataset_id_for("x.jsonl", SHA) != dataset_id_for("y.jsonl", SHA)


def test_ids_are_unique_per_blob_even_where_names_sanitise_alike() -> None:
    """Issue 26.2: the old id (sanitised name + content hash) merged these pairs into one record."""
    for a, b in [("support-bot/batch-01.jsonl", "sales-bot/batch-01.jsonl"), ("team-a/data.jsonl", "team/a-data.jsonl"),
                 ("x" * 100 + "/data.jsonl", "y" * 100 + "/data.jsonl"), ("a/b.jsonl", "a\\b.jsonl")]:
        assert dataset_id_for(a, SHA) != dataset_id_for(b, SHA), (a, b)
