"""The notebook's ``@pipeline`` around the registry's ``chat_completion_pipeline``: its inputs and the job."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.backends.azureml.compute_sizes import FinetuneCompute
from shared.backends.azureml.finetune_parameters import ComponentInterface
from shared.backends.base import BackendError

PIPELINE_COMPONENT = "chat_completion_pipeline"
TRAINED_MODEL_OUTPUT = "trained_model"  # the pipeline output the notebook maps mlflow_model_folder to


def pipeline_inputs(
    interface: ComponentInterface,
    *,
    model_id: str,
    compute: FinetuneCompute,
    train_uri: str,
    test_uri: str,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """The component inputs the notebook passes, plus serverless instance types when no cluster is named."""
    from azure.ai.ml import Input
    from azure.ai.ml.constants import AssetTypes

    inputs: dict[str, Any] = {
        "mlflow_model_path": model_id,
        "compute_model_import": compute.compute,
        "compute_preprocess": compute.compute,
        "compute_finetune": compute.compute,
        "compute_model_evaluation": compute.compute,
        "train_file_path": Input(type=AssetTypes.URI_FILE, path=train_uri),
        "test_file_path": Input(type=AssetTypes.URI_FILE, path=test_uri),
        "number_of_gpu_to_use_finetuning": compute.gpus_per_node,
    }
    if compute.serverless:
        # The component runs model import and preprocessing on its CPU default; training and
        # evaluation need the GPU size.
        for name in ("instance_type_finetune", "instance_type_model_evaluation"):
            if name in interface.inputs:
                inputs[name] = compute.size
    inputs.update(params)
    return inputs


def build_pipeline_job(
    component: Any,
    interface: ComponentInterface,
    inputs: Mapping[str, Any],
    *,
    display_name: str,
    tags: Mapping[str, str],
    experiment_name: str,
) -> Any:
    """The notebook's ``@pipeline`` around the registry component, checked against its interface first."""
    from azure.ai.ml.dsl import pipeline

    problems = interface.problems(inputs)
    if problems:
        raise BackendError(f"pipeline inputs do not match {interface.name} {interface.version}: " + "; ".join(problems))

    @pipeline(name=display_name)
    def create_pipeline() -> dict[str, Any]:
        chat_completion_pipeline = component(**inputs)
        # Exposed as a pipeline output so the model can be registered from azureml://jobs/<job>/outputs/trained_model.
        return {TRAINED_MODEL_OUTPUT: chat_completion_pipeline.outputs.mlflow_model_folder}

    job = create_pipeline()
    job.settings.force_rerun = True  # never reuse a cached run of another dataset's job
    job.settings.continue_on_step_failure = False
    job.tags = {str(k): str(v) for k, v in tags.items()}
    job.experiment_name = experiment_name
    return job


def datastore_uri(datastore: str, blob_name: str) -> str:
    return f"azureml://datastores/{datastore}/paths/{blob_name.lstrip('/')}"


def dataset_label(dataset_id: str) -> str:
    return (dataset_id or "chat")[:12]
