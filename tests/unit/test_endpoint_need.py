"""shared.endpoints.serving.endpoint_need: the one rule for "does the model still need this
endpoint" (issue 30), decided from the route, never from a ``replaced_by`` mark."""

from __future__ import annotations

from typing import Any

import pytest

from shared.endpoints.naming import endpoint_name
from shared.endpoints.serving import endpoint_need, lived_in
from shared.ledger import ENDPOINT, MODEL, ROUTE, Record


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



def model(version: str, **fields: Any) -> Record:
    return Record(MODEL, f"m:{version}", "deployed", fields, "", "")


def serving(ep: str, version: str) -> Record:
    return Record(ENDPOINT, ep, "succeeded", {"model_name": "m", "model_version": version}, "", "")


EP1, EP2 = endpoint_name("m", "1"), endpoint_name("m", "2")


@pytest.mark.parametrize(("endpoint_record", "version_record", "lived"), [
    # ROLLOUT_CANDIDATES off: each version its own endpoint, which its model record names (with the
    # deployment, as settle_provisioning records it): a rollback to 1 moves the route, never into EP2
    (serving(EP2, "2"), model("1", endpoint=EP1, deployment="default"), False),
    (serving(EP2, "2"), model("1"), False),
    # version 2 promoted in place beside version 1, in version 1's endpoint
    (serving(EP1, "2"), model("1", endpoint=EP1, deployment="default"), True),
    (serving(EP1, "2"), model("1"), True),  # its own (derived) endpoint, whatever its record says
    # version 3 promoted there beside version 2: version 2 lived in EP1 as well
    (serving(EP1, "3"), model("2", endpoint=EP1, deployment="version-2"), True),
])
def test_lived_in(endpoint_record, version_record, lived):
    assert lived_in(endpoint_record, version_record) is lived
