"""``python -m shared.cli plan``: the pipeline job the app would submit, as Azure ML v2 YAML, offline.

Built from the Azure ML backend's own pieces (component interface, foundation model tags, compute
checks, pipeline inputs), so the plan is exactly what a submission would send; printing is here.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import sys
from datetime import date
from typing import Any

from shared.backends.azureml.backend import AzureMLBackend
from shared.backends.azureml.compute_sizes import (
    SERVERLESS,
    FinetuneCompute,
    check_finetune_size,
    check_size_current,
    planned_gpus_per_node,
)
from shared.backends.azureml.finetune_parameters import (
    ComponentInterface,
    ParameterError,
    finetune_parameters,
    pipeline_display_name,
)
from shared.backends.azureml.foundation_model import FoundationModel
from shared.backends.azureml.pipeline import PIPELINE_COMPONENT, build_pipeline_job, pipeline_inputs
from shared.backends.azureml.quota import quota_lines, quota_needs, read_usages
from shared.backends.base import MANAGED_BY_TAG, MANAGED_BY_VALUE, BackendError, TransientBackendError
from shared.settings import Settings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Plan:
    yaml: str
    component_source: str  # "registry" or "repo interface"
    inputs: dict[str, Any]
    lifecycle: dict[str, date] = dataclasses.field(default_factory=dict)  # the model's lifecycle tags
    refusals: tuple[str, ...] = ()  # why a submission would be refused today (the plan is still printed)
    quota: tuple[str, ...] = ()  # the vCPU quota the sizes need (and the region's usage, where readable)


def lifecycle_lines(foundation: FoundationModel | None, today: date, online: bool) -> tuple[list[str], list[str]]:
    """The plan's header lines on the model's lifecycle, and the refusals a submission would meet today."""
    if foundation is None or not online:
        return ["# lifecycle: unknown (registry not reachable; its spec holds the dates)"], []
    archived = " (archived in the registry)" if foundation.archived else ""
    if not foundation.lifecycle:
        return [f"# lifecycle of {foundation.label}{archived}: no deprecation or retirement date published"], []
    dates = ", ".join(f"{name} {day.isoformat()}" for name, day in foundation.lifecycle.items())
    lines, refusals = [f"# lifecycle of {foundation.label}{archived}: {dates}"], []
    for kind in ("finetune", "inference"):
        try:
            warning = foundation.check_lifecycle(kind, today)
        except BackendError as exc:
            refusals.append(str(exc))
            lines.append(f"# REFUSED today ({today.isoformat()}): {exc}")
            continue
        if warning:
            lines.append(f"# warning: {warning}")
    return lines, refusals


def plan_pipeline_job(
    settings: Settings, train_uri: str, test_uri: str, *, backend: AzureMLBackend | None = None, today: date | None = None,
) -> Plan:
    """The pipeline job the app would submit for these files, as Azure ML v2 YAML.

    Uses the registry's component and foundation model when reachable; otherwise the component
    interface the repo keeps, the foundation model by label, and GPUs per node from a table of
    known sizes. Each online step is tried once with short timeouts.
    """
    from azure.ai.ml import load_component

    notes: list[str] = []
    online = backend
    if online is None:
        online = AzureMLBackend(settings, client_kwargs={"connection_timeout": 5, "read_timeout": 15, "retry_total": 0})

    component: Any = None
    foundation: FoundationModel | None = None
    try:
        component = online.pipeline_component()
        foundation = online.foundation_model()
        source = f"registry {settings.azure_ml_registry}"
        component_reference = str(component.id)
    except BackendError as exc:
        notes.append(f"registry not reachable ({_first_line(str(exc))}); using the repo's interface copy")
        component = None
    except Exception as exc:  # noqa: BLE001 - e.g. no credential at all: planning stays offline
        notes.append(f"registry not reachable ({type(exc).__name__}); using the repo's interface copy")
        component = None
    if component is None:
        from shared.backends.azureml.finetune_parameters import INTERFACE_PATH

        component = load_component(source=str(INTERFACE_PATH))
        source = f"repo interface copy {INTERFACE_PATH.name} ({component.name} {component.version})"
        pinned = settings.pipeline_component_version
        component_reference = (
            f"azureml://registries/{settings.azure_ml_registry}/components/{PIPELINE_COMPONENT}/"
            + (f"versions/{pinned}" if pinned else "labels/latest")
        )
        label = f"versions/{settings.foundation_model_version}" if settings.foundation_model_version else "labels/latest"
        foundation = FoundationModel(
            id=f"azureml://registries/{settings.azure_ml_registry}/models/{settings.foundation_model_name}/{label}",
            name=settings.foundation_model_name,
            version=settings.foundation_model_version or "latest",
        )
    assert foundation is not None
    interface = ComponentInterface.from_component(component)

    compute: FinetuneCompute | None = None
    workspace_configured = bool(settings.azure_ml_config or settings.azure_subscription_id)
    if source.startswith("registry") and workspace_configured:
        try:
            compute = online.finetune_compute(foundation)
        except TransientBackendError as exc:
            notes.append(f"workspace not reachable ({exc}); GPUs per node from known sizes")
        # A BackendError here (failed cluster, disallowed size) is the answer the user needs: raise it.
    if compute is None and settings.finetune_compute:
        compute = FinetuneCompute(compute=settings.finetune_compute, size="unknown offline", gpus_per_node=1)
        notes.append(f"compute cluster {settings.finetune_compute} not checked offline; number_of_gpu_to_use_finetuning assumed 1")
    elif compute is None:
        size = settings.finetune_instance_type
        check_finetune_size(size, foundation.finetune_compute_allow_list, f"serverless instance type {size}")
        compute = FinetuneCompute(compute=SERVERLESS, size=size, gpus_per_node=planned_gpus_per_node(size))

    try:
        params = finetune_parameters(interface, foundation.model_specific_defaults, settings.finetune_params)
    except ParameterError as exc:
        raise BackendError(f"fine-tune parameters: {exc}") from None
    inputs = pipeline_inputs(
        interface, model_id=foundation.id, compute=compute, train_uri=train_uri, test_uri=test_uri, params=params,
    )
    gpus = int(inputs.get("number_of_gpu_to_use_finetuning", compute.gpus_per_node))
    job = build_pipeline_job(
        component, interface, inputs,
        display_name=pipeline_display_name(foundation.name, "plan", params, gpus),
        tags={MANAGED_BY_TAG: MANAGED_BY_VALUE, "base_model": foundation.name, "base_model_version": foundation.version},
        experiment_name=settings.experiment_name,
    )
    buf = io.StringIO()
    job.dump(buf)
    document = _with_component_reference(buf.getvalue(), component_reference)
    day = today or online._today()
    lifecycle, refusals = lifecycle_lines(foundation, day, source.startswith("registry"))
    sizes = [("INFERENCE_INSTANCE_TYPE", settings.inference_instance_type)]
    if compute.serverless:
        sizes.append(("FINETUNE_INSTANCE_TYPE", compute.size))
    for setting, size in sizes:
        try:
            check_size_current(size, day, setting, setting)
        except BackendError as exc:
            refusals.append(str(exc))
            lifecycle.append(f"# REFUSED today ({day.isoformat()}): {exc}")
    quota = _quota(settings, online, compute, params, checked=source.startswith("registry") and workspace_configured)
    header = [
        "# Pipeline job the fine-tuning autopilot would submit (azure-ai-ml v2 YAML, not submitted).",
        f"# component: {source}",
        f"# foundation model: {foundation.id}",
        *lifecycle,
        f"# compute: {compute.compute} ({compute.size}, {compute.gpus_per_node} GPU(s) per node)",
        *quota,
        *(f"# note: {n}" for n in notes),
    ]
    return Plan(yaml="\n".join(header) + "\n" + document, component_source=source, inputs=inputs,
                lifecycle=dict(foundation.lifecycle), refusals=tuple(refusals), quota=tuple(quota))


def _quota(settings: Settings, online: AzureMLBackend, compute: FinetuneCompute, params: dict[str, Any], *, checked: bool) -> list[str]:
    """The vCPU quota the configured sizes need, checked against the region's usages when the user may read them."""
    needs = quota_needs(compute.size, int(params.get("num_nodes_finetune", 1) or 1),
                        settings.inference_instance_type, settings.inference_instance_count)
    if not needs:
        return ["# quota: sizes unknown to the app's size table; see docs/deploying.md"]
    usages, note = None, "workspace not configured or registry not reachable (offline plan)"
    if checked:
        try:
            subscription = settings.azure_subscription_id or online.workspace.subscription_id
            usages, note = read_usages(online.credential, subscription, online.location())
        except BackendError as exc:
            note = f"workspace region unknown ({_first_line(str(exc))})"
    return quota_lines(needs, usages, note)


def _with_component_reference(document: str, reference: str) -> str:
    """The SDK's YAML with each node's inlined component body replaced by its registry reference.

    The SDK inlines the whole component spec (every input's declaration) ahead of the inputs the
    job sets; the reference is what a v2 job YAML names, so the plan stays short and submittable
    with ``az ml job create --file``.
    """
    import yaml

    data = yaml.safe_load(document)
    data = {"$schema": "https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json", **data}
    for node in (data.get("jobs") or {}).values():
        if isinstance(node, dict) and isinstance(node.get("component"), dict):
            node["component"] = reference
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit] + "..."


def _plan_settings() -> Settings:
    from shared.settings import SettingsError, get_settings, load_settings, local_settings_values

    try:
        return get_settings()
    except SettingsError as exc:
        # Planning needs no workspace: without AZURE_SUBSCRIPTION_ID & co. it only skips the workspace checks.
        log.warning("planning without a workspace: %s", exc)
        env = {**local_settings_values(), **os.environ, "ML_BACKEND": "local"}
        return load_settings(environ=env)


def cli_plan(args: Any) -> int:
    """``python -m shared.cli plan --train URI --test URI [--out FILE]``."""
    settings = _plan_settings()
    # Offline, every credential in DefaultAzureCredential's chain explains at length why it has no token.
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    try:
        plan = plan_pipeline_job(settings, args.train, args.test)
    except BackendError as exc:
        print(f"plan failed: {exc}", file=sys.stderr)
        return 1
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(plan.yaml)
        print(f"wrote {args.out} (component from {plan.component_source})", file=sys.stderr)
    else:
        sys.stdout.write(plan.yaml)
    for refusal in plan.refusals:
        print(f"plan: a submission would be refused today: {refusal}", file=sys.stderr)
    return 0
