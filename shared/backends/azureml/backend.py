"""``AzureMLBackend``: the MLBackend protocol on an Azure ML workspace (see the package docstring).

This module holds the clients, the registry assets and the checks before a submission, and the
submission itself; the other steps are the mixins it is made of, one module each.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from shared.backends.azureml import single_requests as rest
from shared.backends.azureml.activity import EndpointActivity
from shared.backends.azureml.compute_sizes import (
    SERVERLESS,
    FinetuneCompute,
    check_cluster_state,
    check_finetune_size,
    check_size_current,
    known_gpus_per_node,
)
from shared.backends.azureml.endpoints import EndpointLifecycle
from shared.backends.azureml.errors import azure_errors
from shared.backends.azureml.finetune_parameters import (
    ComponentInterface,
    ParameterError,
    finetune_parameters,
    pipeline_display_name,
)
from shared.backends.azureml.foundation_model import FoundationModel
from shared.backends.azureml.jobs import JobReads
from shared.backends.azureml.pipeline import PIPELINE_COMPONENT, build_pipeline_job, dataset_label, datastore_uri, pipeline_inputs
from shared.backends.azureml.recent_reads import REGISTRY_CACHE_S, Cached
from shared.backends.azureml.registration import ModelRegistration
from shared.backends.azureml.rollout import SideBySideDeployments
from shared.backends.azureml.scoring_target import CachedTarget, ScoringTargets
from shared.backends.azureml.sdk_values import text
from shared.backends.base import MANAGED_BY_TAG, MANAGED_BY_VALUE, BackendError, FineTuneRequest, NotFoundError
from shared.settings import Settings

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

log = logging.getLogger(__name__)

_DATASTORE_TYPES = {"azureblob": "container_name", "azuredatalakegen2": "filesystem"}  # DatastoreType values, lower case


class AzureMLBackend(JobReads, ModelRegistration, EndpointLifecycle, SideBySideDeployments, ScoringTargets, EndpointActivity):
    """The MLBackend protocol on an Azure ML workspace (see the package docstring)."""


    name = "azureml"

    def __init__(
        self,
        settings: Settings,
        *,
        credential: Any = None,
        client_kwargs: Mapping[str, Any] | None = None,
        today: Callable[[], date] | None = None,
    ) -> None:
        self.settings = settings
        self._credential_override = credential
        self._client_kwargs = dict(client_kwargs or {})
        self._today = today or (lambda: datetime.now(UTC).date())
        self._lock = threading.Lock()
        self._ws_entity: Any = None
        self._datastore_checked = False
        self._jobs: dict[str, Cached] = {}
        self._deployment_models: dict[tuple[str, str], str] = {}  # (endpoint, deployment) -> model ref
        self._endpoints: dict[str, Cached] = {}  # the last read of each endpoint (set_traffic reuses it)
        self._workspace: MLClient | None = None
        self._registry: MLClient | None = None
        self._foundation: Cached | None = None
        self._component: Cached | None = None
        self._targets: dict[str, CachedTarget] = {}
        self._metrics_clients: dict[str, Any] = {}

    # ------------------------------------------------------------------ clients
    @property
    def credential(self) -> Any:
        if self._credential_override is not None:
            return self._credential_override
        from shared.storage import credential

        return credential(self.settings.azure_client_id)

    @property
    def workspace(self) -> MLClient:
        """Workspace client (no network call on construction)."""
        with self._lock:
            if self._workspace is None:
                from azure.ai.ml import MLClient

                s = self.settings
                if s.azure_ml_config:
                    with azure_errors(f"reading workspace config {s.azure_ml_config}"):
                        self._workspace = MLClient.from_config(self.credential, path=s.azure_ml_config, **self._client_kwargs)
                else:
                    self._workspace = MLClient(
                        self.credential, s.azure_subscription_id, s.azure_resource_group, s.azure_ml_workspace,
                        **self._client_kwargs,
                    )
            return self._workspace

    @property
    def registry(self) -> MLClient:
        """Registry client, created on first use: its constructor calls the registry discovery service."""
        with self._lock:
            if self._registry is None:
                from azure.ai.ml import MLClient

                name = self.settings.azure_ml_registry
                with azure_errors(f"connecting to registry {name}"):
                    self._registry = MLClient(self.credential, registry_name=name, **self._client_kwargs)
            return self._registry

    @property
    def workspace_id(self) -> str:
        s = self.settings
        if s.azure_subscription_id and s.azure_resource_group and s.azure_ml_workspace:
            return s.workspace_resource_id
        ws = self.workspace
        return (
            f"/subscriptions/{ws.subscription_id}/resourceGroups/{ws.resource_group_name}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{ws.workspace_name}"
        )

    # ------------------------------------------------------------------ registry assets
    def foundation_model(self) -> FoundationModel:
        """The registry's foundation model (pinned version or label latest) with its tags parsed."""
        cached = self._foundation
        if cached is not None and time.monotonic() - cached.at < REGISTRY_CACHE_S:
            return cached.value
        s = self.settings
        name, version = s.foundation_model_name, s.foundation_model_version
        with azure_errors(f"reading foundation model {name} from registry {s.azure_ml_registry}"):
            model, raw = rest.registry_model(self.registry, name, version or None)
        system_metadata = raw.get("system_metadata") or raw.get("systemMetadata")
        foundation = FoundationModel.from_tags(str(model.id), str(model.name), str(model.version), model.tags,
                                               system_metadata, archived=bool(raw.get("isArchived")))
        self._foundation = Cached(foundation, time.monotonic())
        log.info("foundation model %s version %s", foundation.name, foundation.version)
        return foundation

    def cached_foundation_model(self) -> FoundationModel | None:
        """The foundation model if this worker read it within the cache time (no request)."""
        cached = self._foundation
        if cached is not None and time.monotonic() - cached.at < REGISTRY_CACHE_S:
            return cached.value
        return None

    def check_foundation_model(self, foundation: FoundationModel, *, finetune: bool) -> list[str]:
        """Lifecycle and inference size checks (BackendError); returns the warnings, already logged."""
        today = self._today()
        warnings = []
        for kind in (("finetune", "inference") if finetune else ("inference",)):
            warning = foundation.check_lifecycle(kind, today)
            if warning:
                log.warning("%s", warning)
                warnings.append(warning)
        size = self.settings.inference_instance_type
        check_size_current(size, today, f"inference instance type {size}", "INFERENCE_INSTANCE_TYPE")
        foundation.check_inference_instance(size)
        return warnings

    def _workspace_entity(self) -> Any:
        """The workspace resource (one read per worker: its region and discovery URL do not change)."""
        if self._ws_entity is None:
            ws = self.workspace
            with azure_errors(f"reading workspace {ws.workspace_name}"):
                self._ws_entity = ws.workspaces.get(ws.workspace_name)
        return self._ws_entity

    def location(self) -> str:
        """The workspace's region (endpoint PUTs and VM size lists need it)."""
        return str(self._workspace_entity().location)

    def _prime_run_history(self) -> None:
        """Point the SDK's run history client at the workspace's API host using the workspace read
        this worker already has (the SDK would read the workspace again for its discovery URL)."""
        ws = self.workspace
        if getattr(ws.jobs, "_api_base_url", None):
            return
        rest.prime_api_url(ws, self._workspace_entity())

    def check_datastore(self) -> None:
        """``AZURE_ML_DATASTORE`` exists and is the prepared container (once per worker, before the first submission)."""
        if self._datastore_checked:
            return
        s = self.settings
        name = s.azure_ml_datastore
        fix = (f"register a blob datastore named {name} on container {s.prepared_container} of the app's storage "
               "account (the deployment creates autopilot_prepared), or set AZURE_ML_DATASTORE")
        try:
            with azure_errors(f"reading datastore {name}"):
                store = self.workspace.datastores.get(name)
        except NotFoundError:
            raise BackendError(f"datastore {name} does not exist in workspace {s.azure_ml_workspace}: {fix}") from None
        kind = text(getattr(store, "type", None)).lower()
        attribute = _DATASTORE_TYPES.get(kind)
        if attribute is None:
            raise BackendError(f"datastore {name} is a {kind or 'unknown'} datastore, not blob storage: {fix}")
        container = str(getattr(store, attribute, "") or "")
        if container != s.prepared_container:
            raise BackendError(
                f"datastore {name} points at container {container or '?'}, not the prepared container {s.prepared_container} "
                f"(train/test would be missing when the job starts): {fix}"
            )
        from shared.storage import storage_account

        account = storage_account(s)
        found = str(getattr(store, "account_name", "") or "")
        if account and found and found.lower() != account.lower():
            raise BackendError(f"datastore {name} is on storage account {found}, not the app's account {account}: {fix}")
        self._datastore_checked = True

    def pipeline_component(self) -> Any:
        """The registry's ``chat_completion_pipeline`` (pinned version or label latest)."""
        cached = self._component
        if cached is not None and time.monotonic() - cached.at < REGISTRY_CACHE_S:
            return cached.value
        s = self.settings
        with azure_errors(f"reading component {PIPELINE_COMPONENT} from registry {s.azure_ml_registry}"):
            if s.pipeline_component_version:
                component = self.registry.components.get(PIPELINE_COMPONENT, version=s.pipeline_component_version)
            else:
                component = self.registry.components.get(PIPELINE_COMPONENT, label="latest")
        self._component = Cached(component, time.monotonic())
        return component

    # ------------------------------------------------------------------ compute
    def finetune_compute(self, foundation: FoundationModel) -> FinetuneCompute:
        """The notebook's compute checks on the named cluster, or on the serverless instance type."""
        s = self.settings
        ws = self.workspace
        if s.finetune_compute:
            what = f"compute cluster {s.finetune_compute}"
            with azure_errors(f"reading {what}"):
                compute = ws.compute.get(s.finetune_compute)
            check_cluster_state(s.finetune_compute, text(getattr(compute, "provisioning_state", None)))
            size = str(getattr(compute, "size", "") or "")
            if not size:
                raise BackendError(f"{what} has no VM size (is it a compute cluster?)")
            target = s.finetune_compute
            setting = "FINETUNE_COMPUTE"
        else:
            size = s.finetune_instance_type
            what = f"serverless instance type {size}"
            target = SERVERLESS
            setting = "FINETUNE_INSTANCE_TYPE"
        check_size_current(size, self._today(), what, setting)
        check_finetune_size(size, foundation.finetune_compute_allow_list, what)
        # Not compute.list_sizes(): a subscription-scope read the app's roles do not allow (compute_sizes).
        return FinetuneCompute(compute=target, size=size, gpus_per_node=known_gpus_per_node(size, what))

    # ------------------------------------------------------------------ fine-tune
    def prepare_finetune(self, request: FineTuneRequest) -> Any:
        """The PipelineJob ``submit_finetune`` would send (every check done, nothing sent)."""
        s = self.settings
        foundation = self.foundation_model()
        foundation.check_finetuning_task()
        self.check_foundation_model(foundation, finetune=True)
        compute = self.finetune_compute(foundation)
        self.check_datastore()
        component = self.pipeline_component()
        interface = ComponentInterface.from_component(component)
        try:
            params = finetune_parameters(interface, foundation.model_specific_defaults, s.finetune_params, request.params)
        except ParameterError as exc:
            raise BackendError(f"fine-tune parameters: {exc}") from None
        inputs = pipeline_inputs(
            interface,
            model_id=foundation.id,
            compute=compute,
            train_uri=datastore_uri(s.azure_ml_datastore, request.train_blob),
            test_uri=datastore_uri(s.azure_ml_datastore, request.test_blob),
            params=params,
        )
        gpus = int(inputs.get("number_of_gpu_to_use_finetuning", compute.gpus_per_node))
        tags = {
            "dataset_id": request.dataset_id,
            "model_name": request.model_name,
            "base_model": foundation.name,
            "base_model_version": foundation.version,
            "pipeline_component": f"{component.name}:{component.version}",
            **request.tags,
            MANAGED_BY_TAG: MANAGED_BY_VALUE,
        }
        with azure_errors("building the fine-tuning pipeline"):
            return build_pipeline_job(
                component, interface, inputs,
                display_name=pipeline_display_name(foundation.name, dataset_label(request.dataset_id), params, gpus),
                tags=tags,
                experiment_name=s.experiment_name,
            )

    def submit_finetune(self, request: FineTuneRequest) -> str:
        job = self.prepare_finetune(request)
        with azure_errors(f"submitting the fine-tuning pipeline for dataset {request.dataset_id}"):
            created = self.workspace.jobs.create_or_update(job, experiment_name=self.settings.experiment_name)
        log.info("submitted fine-tuning job %s for dataset %s", created.name, request.dataset_id)
        return str(created.name)
