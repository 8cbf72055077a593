"""Compute checks for fine-tuning, as the notebook does them before submitting.

A named cluster must not be in a failed provisioning state and its size must be in the foundation
model's fine-tune allow list (or, when the model publishes none, not one of the old sizes the
component does not support). Serverless compute is checked the same way on its instance type.

The GPU count per node becomes the pipeline's ``number_of_gpu_to_use_finetuning``. The notebook
reads it from ``compute.list_sizes()``, a subscription-scope
``GET .../providers/Microsoft.MachineLearningServices/locations/{loc}/vmSizes`` that the app's
identity (AzureML Data Scientist on the workspace) is not allowed to call. The app reads it from
:data:`SIZES` instead (vCPUs, GPUs and the vCPU quota family of each GPU size the registry's
chat models list, as Microsoft's VM size documentation gives them); a size not in the table is a
clear error, not a guess. The same table gives ``plan`` the quota a configuration needs.

Registry allow lists still name VM sizes Azure has retired (the published Phi-3-mini-4k-instruct
lists the NCv3 family, retired on 2025-09-30): :func:`check_size_current` refuses those before
anything is submitted. No azure.ai.ml import here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from datetime import date
from typing import Any

from shared.backends.base import BackendError

SERVERLESS = "serverless"

# Sizes the notebook refuses when the model has no allow list.
UNSUPPORTED_FINETUNE_SIZES = frozenset({"standard_nc6", "standard_nc12", "standard_nc24", "standard_nc24r"})

# VM sizes Azure retired, with the date (azure-docs articles/virtual-machines/ncv3-nc6s-nc12s-nc24s-retirement.md:
# the NCv3 series, NC24rs_v3 included).
RETIRED_SIZES = {
    "standard_nc6s_v3": date(2025, 9, 30), "standard_nc12s_v3": date(2025, 9, 30), "standard_nc24s_v3": date(2025, 9, 30),
    "standard_nc24rs_v3": date(2025, 9, 30),
}


@dataclasses.dataclass(frozen=True)
class SizeFacts:
    vcpus: int
    gpus: int
    family: str  # the vCPU quota family, as Azure's quota pages name it


# Every GPU size of the registry chat models' fine-tune and inference compute lists (Phi-4,
# Phi-3*, as published in Azure/azureml-assets; tests/unit/test_azureml_quota.py checks the
# coverage against the fixtures).
SIZES = {
    "standard_nc24ads_a100_v4": SizeFacts(24, 1, "Standard NCADS_A100_v4 Family"),
    "standard_nc48ads_a100_v4": SizeFacts(48, 2, "Standard NCADS_A100_v4 Family"),
    "standard_nc96ads_a100_v4": SizeFacts(96, 4, "Standard NCADS_A100_v4 Family"),
    "standard_nd96asr_v4": SizeFacts(96, 8, "Standard NDASv4_A100 Family"),
    "standard_nd96amsr_a100_v4": SizeFacts(96, 8, "Standard NDAMSv4_A100 Family"),
    "standard_nc40ads_h100_v5": SizeFacts(40, 1, "Standard NCadsH100v5 Family"),
    "standard_nc80adis_h100_v5": SizeFacts(80, 2, "Standard NCadsH100v5 Family"),
    "standard_nd96isr_h100_v5": SizeFacts(96, 8, "Standard NDSH100v5 Family"),
    "standard_nd40rs_v2": SizeFacts(40, 8, "Standard NDSv2 Family"),
    "standard_nc6s_v3": SizeFacts(6, 1, "Standard NCSv3 Family"),
    "standard_nc12s_v3": SizeFacts(12, 2, "Standard NCSv3 Family"),
    "standard_nc24s_v3": SizeFacts(24, 4, "Standard NCSv3 Family"),
    "standard_nc24rs_v3": SizeFacts(24, 4, "Standard NCSv3 Family"),
}
KNOWN_GPUS_PER_NODE = {name: facts.gpus for name, facts in SIZES.items()}


def size_facts(size: str) -> SizeFacts | None:
    return SIZES.get(size.lower())


def known_gpus_per_node(size: str, what: str) -> int:
    """GPUs per node of ``size`` from :data:`SIZES` (no request: see the module docstring)."""
    facts = size_facts(size)
    if facts is None:
        known = ", ".join(sorted(n.replace("standard_", "Standard_") for n in SIZES))
        raise BackendError(f"{what}: the app does not know how many GPUs VM size {size} has (known: {known})")
    return facts.gpus


@dataclasses.dataclass(frozen=True)
class FinetuneCompute:
    """Where the pipeline's steps run."""

    compute: str  # cluster name, or "serverless"
    size: str  # the cluster's VM size or the serverless instance type
    gpus_per_node: int

    @property
    def serverless(self) -> bool:
        return self.compute == SERVERLESS


def check_finetune_size(size: str, allow_list: list[str] | None, what: str) -> None:
    """Raise BackendError when ``size`` cannot fine-tune this model (``what`` names the compute)."""
    if allow_list is not None:
        if size.lower() not in {a.lower() for a in allow_list}:
            raise BackendError(
                f"{what}: VM size {size} is not in the foundation model's finetune_compute_allow_list: {', '.join(allow_list)}"
            )
    elif size.lower() in UNSUPPORTED_FINETUNE_SIZES:
        raise BackendError(f"{what}: VM size {size} is not supported for fine-tuning")


def check_size_current(size: str, today: date, what: str, setting: str) -> None:
    """Raise BackendError when Azure has retired ``size`` (``setting`` names what to change)."""
    retired = RETIRED_SIZES.get(size.lower())
    if retired is not None and today >= retired:
        raise BackendError(f"{what}: VM size {size} was retired by Azure on {retired.isoformat()}; set {setting} to a current size")


def check_cluster_state(name: str, provisioning_state: str | None) -> None:
    if (provisioning_state or "").lower() == "failed":
        raise BackendError(f"compute cluster {name} is in a failed provisioning state: recreate it or set another FINETUNE_COMPUTE")


def gpus_per_node(size: str, skus: Iterable[Any], what: str) -> int:
    """GPUs of ``size`` from a VM size list (objects with ``name`` and ``gpus``), as ``compute.list_sizes()``
    answers; the app itself does not call it (see the module docstring)."""
    names: list[str] = []
    for sku in skus:
        name = str(getattr(sku, "name", "") or "")
        names.append(name)
        if name.lower() == size.lower():
            gpus = int(getattr(sku, "gpus", 0) or 0)
            if gpus < 1:
                raise BackendError(f"{what}: VM size {size} has no GPU; fine-tuning needs a GPU size")
            return gpus
    shown = ", ".join(sorted(names)[:20]) + (" ..." if len(names) > 20 else "")
    raise BackendError(f"{what}: VM size {size} is not available in the workspace's region (available: {shown or 'none'})")


def planned_gpus_per_node(size: str) -> int:
    """Best offline guess of the GPUs of ``size`` (1 when unknown)."""
    return KNOWN_GPUS_PER_NODE.get(size.lower(), 1)
