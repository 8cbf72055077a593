"""The README stays true about the things a test can check."""

from __future__ import annotations

from shared.settings import SPECS
from tests.support import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_documented() -> None:
    missing = [spec.env for spec in SPECS.values() if f"`{spec.env}`" not in README]
    assert not missing, f"settings missing from the README's configuration table: {missing}"


def test_the_two_commands_are_shown() -> None:
    assert "make demo" in README and "make test" in README


def test_every_function_is_named() -> None:
    for name in ("prepare_chat_data", "on_job_event", "reconcile", "delete_idle_endpoints", "score", "chat_completions",
                 "list_models"):
        assert name in README, name
