"""The data quality gate (issue 26): a file with planted near-duplicates, personal data, secrets and
special tokens; each is found on its line, no value is ever shown; DATA_POLICY report / redact /
reject; the cost forecast and the spend guard that uses it; leakage against a held-out set."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.datasets.preparation import prepare_file
from shared.datasets.quality import find_leaks
from shared.datasets.sensitive import find_sensitive, iban_ok, luhn_ok
from shared.training import policy as P
from tests.fakes.planted import (
    EMAIL,
    NOT_A_CARD,
    VALUES,
    conv,
    planted,
    sentence,
    write_jsonl,
)
from tests.support import make_settings


@pytest.fixture
def planted_file(tmp_path: Path) -> tuple[Path, dict[str, int], dict[str, Any]]:
    rows, lines, extra = planted(random.Random(7))
    return write_jsonl(tmp_path / "planted.jsonl", rows), lines, extra


def test_the_report_finds_each_planted_problem_on_its_line(tmp_path: Path, planted_file) -> None:
    path, lines, extra = planted_file
    prepared = prepare_file(path, tmp_path / "o", make_settings(), collection="support-bot", held_out=extra["held_out"])
    q = prepared.report["quality"]
    for kind in ("email", "phone", "card_number", "iban", "aws_access_key", "private_key", "special_token"):
        assert q["findings"][kind]["lines"] == [lines[kind]], (kind, q["findings"].get(kind))
    assert set(q["findings"]) == {"email", "phone", "card_number", "iban", "aws_access_key", "private_key", "special_token"}
    assert q["counts"] == {"personal_data": 4, "secrets": 2, "special_tokens": 2, "near_duplicates": 1, "leaks": 1}
    assert q["special_tokens"]["found"] == {"<|im_end|>": 1, "<|im_start|>": 1}
    assert q["near_duplicates"]["pairs"] == [{"line": lines["near_duplicate"], "like_line": 3}]
    assert q["leakage"]["lines"] == [{"line": lines["leak"], "held_out_index": 0}]
    assert q["policy"] == "report" and prepared.accepted  # report only
    text = json.dumps(prepared.report)
    for value in VALUES:
        assert value not in text, f"the report shows a value: {value}"


def test_redact_changes_the_prepared_copy_never_the_raw_upload(tmp_path: Path, planted_file) -> None:
    path, _, _ = planted_file
    raw = path.read_bytes()
    prepared = prepare_file(path, tmp_path / "o", make_settings(DATA_POLICY="redact"))
    assert prepared.accepted and path.read_bytes() == raw
    out = prepared.train_path.read_text() + prepared.test_path.read_text()
    for value in VALUES:
        assert value not in out
    assert "<|im_start|>" not in out and "<|im_end|>" not in out
    assert "[REDACTED:email]" in out and "[SPECIAL_TOKEN]" in out
    assert NOT_A_CARD in out and "order" in out  # a number that fails Luhn is left alone
    assert prepared.report["quality"]["redacted_conversations"] == 7
    assert prepared.counts["valid"] == 30


def test_reject_policy_per_collection_rejects_with_the_counts(tmp_path: Path, planted_file) -> None:
    path, _, _ = planted_file
    s = make_settings(DATA_POLICY='{"support-bot": "reject", "*": "report"}')
    assert prepare_file(path, tmp_path / "a", s, collection="sales-bot").accepted
    report = prepare_file(path, tmp_path / "b", s, collection="support-bot").report
    assert not report["decision"]["accepted"]
    (reason,) = [r for r in report["decision"]["reasons"] if r.startswith("DATA_POLICY=reject")]
    assert "1 email finding(s) (lines 5)" in reason and "1 near-duplicate" in reason
    assert EMAIL not in reason


def test_a_clean_file_has_no_findings(tmp_path: Path) -> None:
    rng = random.Random(3)
    path = write_jsonl(tmp_path / "clean.jsonl", [conv(f"Question {i}: {sentence(rng, 12)}", sentence(rng)) for i in range(40)])
    report = prepare_file(path, tmp_path / "o", make_settings(DATA_POLICY="reject")).report
    assert report["decision"]["accepted"], report["decision"]
    assert report["quality"]["counts"] == {"personal_data": 0, "secrets": 0, "special_tokens": 0, "near_duplicates": 0, "leaks": 0}


@pytest.mark.parametrize(("text", "kinds"), [
    ("call 555-123-4567 now", ["phone"]),
    ("the year 2024 and 3.14159 and v1.2.3", []),
    ("card 5500 0000 0000 0004", ["card_number"]),
    ("card 5500 0000 0000 0005", []),
    ("DE89 3704 0044 0532 0130 00", ["iban"]),
    ("DE89 3704 0044 0532 0130 01", []),
    ("ghp_" + "a1" * 18, ["github_token"]),
    ("xoxb-123456789012-abcdefghij", ["slack_token"]),
    ("AccountKey=" + "A" * 86 + "==", ["azure_storage_key"]),
    ("-----BEGIN OPENSSH PRIVATE KEY-----", ["private_key"]),
    ("no@tld", []),
])
def test_detectors(text: str, kinds: list[str]) -> None:
    assert [k for k, _, _ in find_sensitive(text)] == kinds


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 33")
    assert not iban_ok("GB82 WEST 1234 5698 7654")  # wrong length for GB


def test_find_leaks_for_the_eval_set() -> None:
    rng = random.Random(5)
    train = [conv(f"q{i} {sentence(rng, 10)}", sentence(rng))["messages"] for i in range(20)]
    held_out = [train[4], conv("other", sentence(rng))["messages"]]
    near = [dict(m) for m in train[9]]
    near[1]["content"] = near[1]["content"] + " indeed"
    held_out.append(near)
    assert find_leaks(train, held_out) == [(4, 0), (9, 2)]


def test_cost_forecast_is_tokens_times_epochs_over_throughput_times_price(tmp_path: Path, planted_file) -> None:
    path, _, _ = planted_file
    s = make_settings(FINETUNE_PARAMS='{"num_train_epochs": 2}', INSTANCE_HOURLY_PRICES='{"local": 3.6}',
                      TRAINING_TOKENS_PER_SECOND='{"local": 10}')
    report = prepare_file(path, tmp_path / "o", s).report
    f = report["forecast"]
    chars = report["stats"]["characters_per_conversation"]["mean"] * report["counts"]["train"]
    assert f["tokens"] == int(int(chars) / 4.0) and f["epochs"] == 2.0 and f["instance_type"] == "local"
    assert f["usd"] == pytest.approx(f["tokens"] * 2 / 10 / 3600 * 3.6, rel=1e-3)


def test_the_spend_guard_holds_a_job_whose_forecast_is_over_the_budget() -> None:
    now = datetime(2026, 12, 2, 12, tzinfo=UTC)
    ok = P.GuardFacts(budget_usd=10.0, next_forecast_usd=4.0)
    assert P.guard_reason(ok, now) is None
    over = P.GuardFacts(budget_usd=10.0, next_forecast_usd=12.5)
    reason = P.guard_reason(over, now)
    assert reason is not None and "forecast cost $12.50" in reason and "FINETUNE_BUDGET_USD" in reason


def test_the_default_azure_base_model_has_its_special_tokens_checked() -> None:
    """Phi-4 is the default FOUNDATION_MODEL_NAME: its chat-template tokens are found in content
    (without a list the gate said "not checked" and let them through)."""
    from shared.datasets.quality import special_tokens_for

    settings = make_settings().replace(ml_backend="azureml")
    tokens, where = special_tokens_for(settings)
    assert settings.foundation_model_name == "Phi-4" and "Phi-4" in where, where
    assert {"<|im_start|>", "<|im_sep|>", "<|im_end|>", "<|endoftext|>", "<|dummy_87|>"} <= set(tokens)
    assert len(set(tokens)) == 96  # ids 100256-100351
