"""Helpers of the evaluation tests: the real blob trigger, corpus data (their backend: the in-memory workspace)."""

from __future__ import annotations

from typing import Any

from shared.settings import Settings
from shared.storage import blob_service
from tests.fakes.uploads import conv
from tests.support import user_function


def prepare_trigger() -> Any:
    """The decorated blob-trigger function, as indexed from a FunctionApp (what the host calls)."""
    from functions import prepare_chat_data

    return user_function(prepare_chat_data, "prepare_chat_data")


def data(first: int, last: int) -> bytes:
    return b"".join(conv(i) for i in range(first, last))


def prepared_lines(s: Settings, name: str) -> list[bytes]:
    return blob_service(s).get_blob_client(s.prepared_container, name).download_blob().readall().splitlines()


