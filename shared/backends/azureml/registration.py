"""Registering a finished job's trained model as a workspace model version (the notebook's ``Model(path=...)``)."""

from __future__ import annotations

import logging

from shared.backends.azureml import single_requests as rest
from shared.backends.azureml.errors import azure_errors
from shared.backends.azureml.foundation_model import VERSION_PROBES, registered_model_version
from shared.backends.azureml.pipeline import TRAINED_MODEL_OUTPUT
from shared.backends.azureml.sdk_values import parse_time
from shared.backends.base import MANAGED_BY_TAG, MANAGED_BY_VALUE, BackendError, ModelRef, NotFoundError, lineage_tags

log = logging.getLogger(__name__)


class ModelRegistration:
    """The registration part of :class:`~shared.backends.azureml.backend.AzureMLBackend` (uses its job reads)."""

    def register_model(self, job_name: str, model_name: str) -> ModelRef:
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Model

        ws = self.workspace
        job = self._final_job(job_name)
        job_tags = dict(job.tags or {})
        created = getattr(getattr(job, "creation_context", None), "created_at", None)
        first = int(registered_model_version(job_name, parse_time(created)))
        base_model = job_tags.get("base_model", self.settings.foundation_model_name)
        owners: list[str] = []
        for version in (str(first + i) for i in range(VERSION_PROBES)):
            ref = ModelRef(name=model_name, version=version, job_name=job_name, base_model=base_model)
            try:
                with azure_errors(f"reading model {model_name}:{version}"):
                    existing = ws.models.get(model_name, version=version)
            except NotFoundError:
                break
            owner = (existing.tags or {}).get("job_name")
            if not owner or owner == job_name:
                log.info("model %s already registered for job %s", ref.ref, job_name)
                return ref
            owners.append(f"{version} ({owner})")  # another job created in the same second: the next one
        else:
            raise BackendError(f"model {model_name}: versions {', '.join(owners)} already belong to other jobs, not {job_name}")
        model = Model(
            path=f"azureml://jobs/{job_name}/outputs/{TRAINED_MODEL_OUTPUT}",
            type=AssetTypes.MLFLOW_MODEL,
            name=model_name,
            version=version,
            description=f"{base_model} fine-tuned on chat data by job {job_name}",
            tags={
                MANAGED_BY_TAG: MANAGED_BY_VALUE,
                "job_name": job_name,
                "base_model": base_model,
                "dataset_id": job_tags.get("dataset_id", ""),
                **lineage_tags(job_tags),  # collection, corpus id, dataset ids (corpus mode)
            },
        )
        with azure_errors(f"registering model {ref.ref} from job {job_name}"):
            rest.put_model_version(ws, model)
        log.info("registered model %s from job %s", ref.ref, job_name)
        return ref
