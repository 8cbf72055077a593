from __future__ import annotations

import pytest

from shared.endpoints.naming import endpoint_name, is_valid_endpoint_name


@pytest.mark.parametrize(
    ("model", "version"),
    [("smollm2-135m-instruct-chat-ft", "1"), ("phi-3-mini-4k-instruct-chat-ft", "ftjob-20260101-abcdef"),
     ("3d-model", "7"), ("x", "1"), ("A" * 80, "v" * 40), ("weird__name!!", "1.0")],
)
def test_endpoint_names_are_valid_and_deterministic(model: str, version: str) -> None:
    name = endpoint_name(model, version)
    assert is_valid_endpoint_name(name), name
    assert 3 <= len(name) <= 32 and name[0].isalpha()
    assert endpoint_name(model, version) == name


def test_versions_get_distinct_names() -> None:
    assert endpoint_name("m", "1") != endpoint_name("m", "2")
