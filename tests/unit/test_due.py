"""The scheduled submission's message and delay (shared.training.due); on storage: tests/storage/test_due_submission.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from shared.training.due import DueSubmission, delay_s

pytestmark = pytest.mark.unit

AT = datetime(2026, 12, 3, 10, 0, 0, tzinfo=UTC)


def test_the_message_round_trips() -> None:
    message = DueSubmission("support-bot", AT, "ledger", 3)
    assert DueSubmission.decode(message.encode()) == message
    assert DueSubmission.decode(b'{"collection": "a", "due_at": "2026-12-03T10:00:00Z"}') == DueSubmission("a", AT, "", 1)


@pytest.mark.parametrize("body", [b"not json", b"{}", b'{"collection": "a"}', b'{"collection": "a", "due_at": ""}',
                                  b'{"collection": "a", "due_at": "soon"}', b'[1]'])
def test_a_bad_message_says_what_it_should_be(body: bytes) -> None:
    with pytest.raises(ValueError, match="collection submission message is not"):
        DueSubmission.decode(body)


def test_the_delay_rounds_up_so_the_message_is_never_early() -> None:
    assert delay_s(AT, AT - timedelta(seconds=59.2)) == 60
    assert delay_s(AT, AT - timedelta(seconds=60)) == 60
    assert delay_s(AT, AT) == 0
    assert delay_s(AT, AT + timedelta(seconds=5)) == 0
