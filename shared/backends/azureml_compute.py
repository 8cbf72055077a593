"""Compute checks for fine-tuning, as the notebook does them before submitting.

A named cluster must not be in a failed provisioning state and its size must be in the foundation
model's ``finetune_compute_allow_list`` (or, when the model publishes none, not one of the old
sizes the component does not support). Serverless compute is checked the same way on its instance
type. The GPU count per node comes from the workspace's ``compute.list_sizes()`` and becomes the
pipeline's ``number_of_gpu_to_use_finetuning``.

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

# VM sizes Azure retired, with the date (azure-docs articles/virtual-machines/ncv3-nc6s-nc12s-nc24s-retirement.md).
RETIRED_SIZES = {
    "standard_nc6s_v3": date(2025, 9, 30), "standard_nc12s_v3": date(2025, 9, 30), "standard_nc24s_v3": date(2025, 9, 30),
}

# GPUs per node of common fine-tuning sizes; only used by the offline plan, which cannot ask
# the workspace (``compute.list_sizes()``) how many GPUs a size has.
KNOWN_GPUS_PER_NODE = {
    "standard_nc6s_v3": 1, "standard_nc12s_v3": 2, "standard_nc24s_v3": 4, "standard_nc24rs_v3": 4,
    "standard_nc24ads_a100_v4": 1, "standard_nc48ads_a100_v4": 2, "standard_nc96ads_a100_v4": 4,
    "standard_nd40rs_v2": 8, "standard_nd96asr_v4": 8, "standard_nd96amsr_a100_v4": 8,
    "standard_nc40ads_h100_v5": 1, "standard_nc80adis_h100_v5": 2, "standard_nd96isr_h100_v5": 8,
}


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
    """GPUs of ``size`` from the workspace's VM size list (objects with ``name`` and ``gpus``)."""
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
