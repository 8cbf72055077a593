"""The managed online deployment the app creates for a model version: size, probes, timeouts, tags."""

from __future__ import annotations

from typing import Any

from shared.backends.base import MANAGED_BY_TAG, MANAGED_BY_VALUE
from shared.settings import Settings

DEPLOYMENT_NAME = "demo"  # the notebook's deployment name: the first version's deployment in its endpoint
PROBE_INITIAL_DELAY_S = 600  # the model takes minutes to load: no liveness restarts before that
REQUEST_TIMEOUT_MS = 90_000


def managed_deployment(settings: Settings, name: str, endpoint_name: str, model_arm_id: str, model_ref: str) -> Any:
    """``ManagedOnlineDeployment`` of ``model_ref`` named ``name`` in endpoint ``endpoint_name``."""
    from azure.ai.ml.entities import ManagedOnlineDeployment, OnlineRequestSettings, ProbeSettings

    return ManagedOnlineDeployment(
        name=name,
        endpoint_name=endpoint_name,
        model=model_arm_id,
        instance_type=settings.inference_instance_type,
        instance_count=settings.inference_instance_count,
        liveness_probe=ProbeSettings(initial_delay=PROBE_INITIAL_DELAY_S),
        request_settings=OnlineRequestSettings(request_timeout_ms=REQUEST_TIMEOUT_MS),
        tags={MANAGED_BY_TAG: MANAGED_BY_VALUE, "model": model_ref},
    )
