"""The GPU quota a configuration needs, and the subscription's usage of it where the caller may read it.

Fine-tuning on serverless compute and the managed online endpoint both draw on the region's
per-VM-family vCPU quota (``Standard NCADS_A100_v4 Family`` for the default
``Standard_NC24ads_A100_v4``), and a subscription without it fails at the first job, after the
data was prepared. Managed online endpoints also reserve 20% extra for upgrades (Azure ML's
how-to-manage-quotas: the reserve is counted against the quota), so one instance of a 24-vCPU size
needs ceil(24 x 1.2) = 29.

:func:`quota_needs` states what the configured sizes need per family (vCPUs and GPUs from
:data:`shared.backends.azureml.compute_sizes.SIZES`). :func:`read_usages` reads
``GET /subscriptions/{sub}/providers/Microsoft.MachineLearningServices/locations/{loc}/usages``
(response shape: the azure-rest-api-specs ``Usage/list.json`` example), a subscription-scope read:
``plan`` runs it with the user's own sign-in; the app's identity never calls it (its roles are on
the workspace). A refusal (401/403) is reported as "not checked", not an error.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

from shared.backends.azureml.compute_sizes import size_facts

ENDPOINT_RESERVE = 0.20
USAGES_API_VERSION = "2024-10-01"
ARM = "https://management.azure.com"


@dataclasses.dataclass(frozen=True)
class QuotaNeed:
    family: str
    vcpus: int
    parts: tuple[str, ...]  # what the vCPUs are for

    @property
    def usage_name(self) -> str:
        """The family's entry in the usages list (``Standard NC Family Cluster Dedicated vCPUs`` in the published example)."""
        return f"{self.family} Cluster Dedicated vCPUs"


def quota_needs(finetune_size: str | None, finetune_nodes: int, inference_size: str, inference_count: int) -> list[QuotaNeed]:
    """vCPUs per quota family for one fine-tuning job and the endpoint (sizes the table does not know are left out)."""
    by_family: dict[str, list[tuple[int, str]]] = {}
    if finetune_size:
        facts = size_facts(finetune_size)
        if facts is not None:
            nodes = max(int(finetune_nodes), 1)
            by_family.setdefault(facts.family, []).append(
                (nodes * facts.vcpus, f"fine-tuning: {nodes} node(s) x {facts.vcpus} vCPUs of {finetune_size}"))
    facts = size_facts(inference_size)
    if facts is not None:
        count = max(int(inference_count), 1)
        need = math.ceil(count * facts.vcpus * (1 + ENDPOINT_RESERVE))
        by_family.setdefault(facts.family, []).append(
            (need, f"endpoint: {count} instance(s) x {facts.vcpus} vCPUs of {inference_size} "
                   f"+{ENDPOINT_RESERVE:.0%} that managed online endpoints reserve, rounded up"))
    return [QuotaNeed(family, sum(v for v, _ in parts), tuple(f"{v} ({what})" for v, what in parts))
            for family, parts in by_family.items()]


def quota_lines(needs: Iterable[QuotaNeed], usages: list[Mapping[str, Any]] | None, note: str = "") -> list[str]:
    """``plan``'s header lines: each family's need and, when the usages were read, limit and use."""
    lines = []
    by_name = {str((u.get("name") or {}).get("value", "")).lower(): u for u in usages or []}
    for need in needs:
        lines.append(f"# quota needed: {need.vcpus} vCPUs of {need.family} = {' + '.join(need.parts)}")
        if usages is None:
            lines.append(f"# quota not checked: {note or 'usages not read'}")
            continue
        usage = by_name.get(need.usage_name.lower())
        if usage is None:
            lines.append(f"# quota check: the region lists no '{need.usage_name}' (no quota for this family: request it)")
            continue
        limit, current = int(usage.get("limit") or 0), int(usage.get("currentValue") or 0)
        free = limit - current
        verdict = "enough" if free >= need.vcpus else f"NOT ENOUGH: request {need.vcpus - free} more vCPUs of {need.family}"
        lines.append(f"# quota check: {need.usage_name}: limit {limit}, in use {current}, free {free}, needed {need.vcpus}: {verdict}")
    return lines


def read_usages(credential: Any, subscription_id: str, location: str, *, timeout_s: float = 15.0) -> tuple[list[dict[str, Any]] | None, str]:
    """(usages, "") or (None, why not): the region's Azure ML usages, pages followed."""
    import requests

    try:
        token = credential.get_token(f"{ARM}/.default").token
    except Exception as exc:  # noqa: BLE001 - no sign-in: the plan still prints, unchecked
        return None, f"no credential could sign in ({type(exc).__name__})"
    url: str | None = (f"{ARM}/subscriptions/{subscription_id}/providers/Microsoft.MachineLearningServices/"
                       f"locations/{location}/usages?api-version={USAGES_API_VERSION}")
    found: list[dict[str, Any]] = []
    for _ in range(20):
        if not url:
            break
        try:
            answer = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)
        except requests.RequestException as exc:
            return None, f"usages not reachable ({type(exc).__name__})"
        if answer.status_code in (401, 403):
            return None, ("the signed-in identity may not read usages (Microsoft.MachineLearningServices/locations/usages/read "
                          "at the subscription; Reader has it)")
        if answer.status_code != 200:
            return None, f"usages answered HTTP {answer.status_code}"
        body = answer.json()
        found.extend(body.get("value") or [])
        url = body.get("nextLink")
    return found, ""
