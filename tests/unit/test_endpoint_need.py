"""shared.endpoints.routing.endpoint_need: the one rule for "does the model still need this
endpoint" (issue 30), decided from the route, never from a ``replaced_by`` mark."""

from __future__ import annotations

from typing import Any

import pytest

from shared.endpoints.routing import endpoint_need
from shared.ledger import ENDPOINT, ROUTE, Record


def endpoint(version: str, **fields: Any) -> Record:
    return Record(ENDPOINT, f"m-{version}", "failed", {"model_name": "m", "model_version": version, **fields}, "", "")


def route(version: str, **fields: Any) -> Record:
    return Record(ROUTE, "m", "active", {"endpoint": f"m-{version}", "model_version": version, **fields}, "", "")


@pytest.mark.parametrize(("record", "active", "needed", "why"), [
    # a rollback made a replaced version the active one again: its old mark does not decide
    (endpoint("1", replaced_by="m-2"), route("1", rolled_back_from="2"), True, "serves model m"),
    (endpoint("1"), route("1"), True, "serves model m"),
    (endpoint("1", replaced_by="m-2"), route("2"), False, "replaced by m-2"),
    (endpoint("1"), route("2"), False, "served by m-2"),
    # the version rolled back from is needed by nobody; a newer fine-tune is
    (endpoint("2"), route("1", rolled_back_from="2"), False, "rolled back from version 2"),
    (endpoint("3"), route("1", rolled_back_from="2"), True, "takes over when ready"),
    (endpoint("3"), route("2"), True, "takes over when ready"),
    # a rollback waiting for this version's redeployment
    (endpoint("1", replaced_by="m-2"), route("2", rollback_to="1"), True, "waits for it"),
    (endpoint("1"), None, True, "no active endpoint yet"),
])
def test_endpoint_need(record, active, needed, why):
    need = endpoint_need(record, active)
    assert (need.needed, why in need.reason) == (needed, True), need
