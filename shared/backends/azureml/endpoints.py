"""The endpoint state machine: the endpoint PUT, its first deployment, 100% traffic, the DELETE.

1. ``begin_deploy`` checks the instance type against the model's inference allow list, then
   starts the endpoint PUT (``ManagedOnlineEndpoint``, tags carry the model ``name:version``).
2. ``get_endpoint`` (driven by the reconcile timer) reads the endpoint. While Azure is creating
   it: ``provisioning``. Once it has succeeded and has no deployment yet, it starts the
   deployment PUT (``ManagedOnlineDeployment`` of the model in the endpoint's tags) and still
   answers ``provisioning``: a deployment can only be created on an existing endpoint, and the
   endpoint's own tags make this step stateless (any worker, any time, exactly the same call).
3. The deployment succeeds: ``get_endpoint`` answers ``succeeded``; the caller then calls
   ``set_traffic`` (100% to the deployment, started, not waited on). Failures at any step
   answer ``failed`` with a reason.

A split between two deployments of one endpoint is :mod:`shared.backends.azureml.rollout`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import datetime
from typing import Any

from shared.backends.azureml import single_requests as rest
from shared.backends.azureml.compute_sizes import check_size_current
from shared.backends.azureml.deployment_spec import DEPLOYMENT_NAME, managed_deployment
from shared.backends.azureml.endpoint_health import serving_deployment
from shared.backends.azureml.errors import azure_errors
from shared.backends.azureml.recent_reads import REUSE_S, Cached
from shared.backends.azureml.rollout import set_traffic_split
from shared.backends.azureml.sdk_values import parse_time, text
from shared.backends.base import (
    EP_DELETING,
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    BackendError,
    EndpointInfo,
    ModelRef,
    NotFoundError,
    TransientBackendError,
)

log = logging.getLogger(__name__)


class EndpointLifecycle:
    """The endpoint part of :class:`~shared.backends.azureml.backend.AzureMLBackend` (its workspace, lock and caches)."""

    def _read_endpoint(self, endpoint_name: str) -> Any | None:
        try:
            with azure_errors(f"reading endpoint {endpoint_name}"):
                endpoint = rest.get_endpoint(self.workspace, endpoint_name)
        except NotFoundError:
            with self._lock:
                self._endpoints.pop(endpoint_name, None)
            return None
        with self._lock:
            self._endpoints[endpoint_name] = Cached(endpoint, time.monotonic())
        return endpoint

    def _forget_endpoint(self, endpoint_name: str) -> None:
        with self._lock:
            self._endpoints.pop(endpoint_name, None)

    def _recent_endpoint(self, endpoint_name: str) -> Any | None:
        """The endpoint as ``get_endpoint`` read it moments ago (the reconcile step that then routes traffic), else a read."""
        with self._lock:
            cached = self._endpoints.pop(endpoint_name, None)
        if cached is not None and time.monotonic() - cached.at < REUSE_S:
            return cached.value
        return self._read_endpoint(endpoint_name)

    def _read_deployment(self, endpoint_name: str, name: str = DEPLOYMENT_NAME) -> Any | None:
        try:
            with azure_errors(f"reading deployment {name} of endpoint {endpoint_name}"):
                return self.workspace.online_deployments.get(name, endpoint_name)
        except NotFoundError:
            return None

    def _model_arm_id(self, model_ref: str) -> str:
        name, sep, version = model_ref.rpartition(":")
        if not sep or not name or not version:
            raise BackendError(f"model reference {model_ref!r} is not name:version")
        return f"{self.workspace_id}/models/{name}/versions/{version}"

    def begin_deploy(self, model: ModelRef, endpoint_name: str, tags: dict[str, str]) -> None:
        """Step 1 of the state machine: check the size, start the endpoint (or the deployment if it exists)."""
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        s = self.settings
        # The sizes and lifecycle were checked before the job was submitted; re-checked here only
        # against what this worker already knows (no registry round trip on every deployment):
        # a size Azure refuses fails the deployment PUT with Azure's reason.
        check_size_current(s.inference_instance_type, self._today(), f"inference instance type {s.inference_instance_type}",
                           "INFERENCE_INSTANCE_TYPE")
        foundation = self.cached_foundation_model()
        if foundation is not None:
            self.check_foundation_model(foundation, finetune=False)
        endpoint = self._read_endpoint(endpoint_name)
        state = text(getattr(endpoint, "provisioning_state", None)).lower()
        if endpoint is not None and state == "deleting":
            raise TransientBackendError(f"endpoint {endpoint_name} is being deleted; deploy again once it is gone")
        if endpoint is not None and state == "succeeded":
            # A deploy request (first, or a heal attempt) re-submits a Failed/Canceled deployment;
            # get_endpoint's step 2 never does (the health loop bounds how often this happens).
            self._ensure_deployment(endpoint, redo_failed=True)
            return
        if endpoint is not None and state != "failed":
            log.info("endpoint %s is already being created (%s)", endpoint_name, state)
            return
        # Missing, or failed: (re)start the endpoint PUT; ARM retries the creation.
        endpoint_tags = {
            **{str(k): str(v) for k, v in tags.items()},
            "model": model.ref,
            "model_name": model.name,
            "model_version": model.version,
            "job_name": model.job_name,
            "base_model": model.base_model,
            MANAGED_BY_TAG: MANAGED_BY_VALUE,
        }
        new_endpoint = ManagedOnlineEndpoint(
            name=endpoint_name,
            description=f"Online endpoint for {model.ref}, fine-tuned chat completion",
            auth_mode=s.endpoint_auth_mode,
            tags=endpoint_tags,
        )
        with azure_errors(f"creating endpoint {endpoint_name}"):
            location = self.location()
            rest.start_endpoint_put(self.workspace, new_endpoint, location)
        log.info("started creating endpoint %s for %s", endpoint_name, model.ref)

    def _ensure_deployment(self, endpoint: Any, *, redo_failed: bool = False) -> Any | None:
        """Step 2: the endpoint exists; start the deployment of its tagged model unless there is one
        (or, with ``redo_failed``, unless the one there is not Failed or Canceled)."""
        # A promoted candidate (or a version rolled back to inside the endpoint) serves under its
        # own name: that is the deployment checked, and re-submitted when it failed (a heal).
        name = serving_deployment(endpoint, DEPLOYMENT_NAME)
        existing = self._read_deployment(endpoint.name, name)
        existing_state = text(getattr(existing, "provisioning_state", None)).lower() if existing is not None else ""
        if existing is not None and not (redo_failed and existing_state in {"failed", "canceled"}):
            return existing
        model_ref = (endpoint.tags or {}).get("model")
        if not model_ref:
            raise BackendError(f"endpoint {endpoint.name} has no model tag: cannot tell which model to deploy")
        deployment = managed_deployment(self.settings, name, endpoint.name, self._model_arm_id(model_ref), model_ref)
        with azure_errors(f"creating deployment {name} of endpoint {endpoint.name}"):
            rest.start_deployment_put(self.workspace, deployment, str(endpoint.location or "") or self.location())
        log.info("started deployment %s of %s on endpoint %s", name, model_ref, endpoint.name)
        return None

    def get_endpoint(self, endpoint_name: str) -> EndpointInfo | None:
        """Endpoint + deployment state; starts the deployment once the endpoint exists (step 2)."""
        endpoint = self._read_endpoint(endpoint_name)
        if endpoint is None:
            return None
        base = self._endpoint_info(endpoint)
        state = text(endpoint.provisioning_state).lower()
        if state == "deleting":
            return dataclasses.replace(base, state=EP_DELETING)
        if state in {"failed", "canceled"}:
            return dataclasses.replace(base, state=EP_FAILED, error=f"endpoint {endpoint_name} provisioning {state}")
        if state != "succeeded":
            return dataclasses.replace(base, state=EP_PROVISIONING)
        try:
            deployment = self._ensure_deployment(endpoint)
        except TransientBackendError:
            raise
        except BackendError as exc:
            return dataclasses.replace(base, state=EP_FAILED, error=str(exc))
        if deployment is None:
            return dataclasses.replace(base, state=EP_PROVISIONING, deployment=base.deployment or DEPLOYMENT_NAME)
        dstate = text(deployment.provisioning_state).lower()
        info = dataclasses.replace(
            base,
            deployment=str(deployment.name),
            instance_type=deployment.instance_type,
            instance_count=int(deployment.instance_count or 1),
        )
        if dstate == "succeeded":
            return dataclasses.replace(info, state=EP_SUCCEEDED)
        if dstate in {"failed", "canceled"}:
            return dataclasses.replace(
                info, state=EP_FAILED,
                error=f"deployment {deployment.name} of endpoint {endpoint_name} {dstate} "
                      f"(az ml online-deployment get-logs -e {endpoint_name} -n {deployment.name})",
            )
        return dataclasses.replace(info, state=EP_PROVISIONING)

    def _endpoint_info(self, endpoint: Any, last_activity: datetime | None = None) -> EndpointInfo:
        tags = {str(k): str(v) for k, v in (endpoint.tags or {}).items()}
        traffic = {str(k): int(v) for k, v in (endpoint.traffic or {}).items()}
        serving = [d for d, share in traffic.items() if share > 0]
        state = text(endpoint.provisioning_state).lower()
        if state == "succeeded":
            # Without reading the deployment: an endpoint routing traffic serves; one that does not is still rolling out.
            ep_state = EP_SUCCEEDED if serving else EP_PROVISIONING
        elif state == "deleting":
            ep_state = EP_DELETING
        elif state in {"failed", "canceled"}:
            ep_state = EP_FAILED
        else:
            ep_state = EP_PROVISIONING
        return EndpointInfo(
            name=str(endpoint.name),
            state=ep_state,
            tags=tags,
            model=tags.get("model"),
            deployment=serving[0] if serving else None,
            traffic=traffic,
            instance_type=None,
            created_at=parse_time((endpoint.properties or {}).get("createdAt")),
            last_activity=last_activity,
        )

    def set_traffic(self, endpoint_name: str, traffic: dict[str, int] | None = None,
                    mirror: dict[str, int] | None = None) -> None:
        """Step 3: route 100% to the deployment (started, not waited on; a no-op when already so).
        With ``traffic``: that split between the endpoint's deployments (shared.backends.azureml.rollout)."""
        if traffic is not None or mirror:
            set_traffic_split(self, endpoint_name, traffic or {}, mirror)
            return
        endpoint = self._recent_endpoint(endpoint_name)
        if endpoint is None:
            raise NotFoundError(f"endpoint {endpoint_name} does not exist")
        current = {k: int(v) for k, v in (endpoint.traffic or {}).items() if int(v)}
        if len(current) == 1 and next(iter(current.values())) == 100:
            return  # one deployment takes everything already (the first one, or a promoted candidate)
        wanted = {DEPLOYMENT_NAME: 100}
        endpoint.traffic = wanted
        with azure_errors(f"routing traffic of endpoint {endpoint_name} to {DEPLOYMENT_NAME}"):
            rest.start_endpoint_put(self.workspace, endpoint, str(endpoint.location or "") or self.location())
        log.info("routing 100%% of endpoint %s to deployment %s", endpoint_name, DEPLOYMENT_NAME)
    def list_endpoints(self) -> list[EndpointInfo]:
        with azure_errors("listing online endpoints"):
            endpoints = [e for e in self.workspace.online_endpoints.list() if (e.tags or {}).get(MANAGED_BY_TAG) == MANAGED_BY_VALUE]
        activity = self.last_activity(endpoints)
        return [self._endpoint_info(e, activity.get(str(e.id).lower())) for e in endpoints]

    def begin_delete_endpoint(self, endpoint_name: str) -> None:
        with self._lock:
            self._targets.pop(endpoint_name, None)
        try:
            with azure_errors(f"deleting endpoint {endpoint_name}"):
                rest.start_endpoint_delete(self.workspace, endpoint_name)
        except NotFoundError:
            log.info("endpoint %s is already gone", endpoint_name)
            return
        log.info("started deleting endpoint %s", endpoint_name)
