"""Foundation model facts from its registry metadata, and the fine-tuned model's registered version.

The registry published the compute allow lists and the model's own fine-tune defaults as tags
holding Python literals in strings (``"['Standard_NC24ads_A100_v4', ...]"``). The notebook reads
them with ``ast.literal_eval``; so does the app, but a malformed tag is a clear error that names
the tag instead of a crash deep inside a handler.

The model's lifecycle was published the same way (``FinetuneDeprecationDate``,
``FinetuneRetirementDate``, ``InferenceDeprecationDate``, ``InferenceRetirementDate``,
``InferenceLegacyDate``, ISO dates). Since mid-2026 the asset specs (Azure/azureml-assets) carry
lifecycle, compute lists and fine-tuning tasks under ``system_metadata`` instead
(``deprecation.finetuneRetirementDate``, ``supportedComputes.finetuneComputes``,
``tasks.fineTuningTasks``), and their publisher stores it on the registry's model version as
``properties.system_metadata`` with every value a string (mappings as JSON, lists as Python
literals: ``stringify_dictionary`` of azureml-assets' publish_utils). Both are read;
``system_metadata`` wins where it has a value (as azureml-assets' own validator treats it).
Azure refuses a fine-tune or deployment of a retired model, but only after the job was queued.
:meth:`FoundationModel.check_lifecycle` refuses at once on or after the retirement date and warns,
with the date, from the deprecation date or within ``RETIREMENT_WARNING_DAYS`` of retirement.
No azure.ai.ml import here.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

from shared.backends.base import BackendError

FINETUNE_ALLOW_LIST_TAG = "finetune_compute_allow_list"
INFERENCE_ALLOW_LIST_TAG = "inference_compute_allow_list"
MODEL_SPECIFIC_DEFAULTS_TAG = "model_specific_defaults"

# Lifecycle tags, in the order ``plan`` prints them.
LIFECYCLE_TAGS = (
    "FinetuneDeprecationDate", "FinetuneRetirementDate",
    "InferenceLegacyDate", "InferenceDeprecationDate", "InferenceRetirementDate",
)
# system_metadata.deprecation keys -> the lifecycle names above.
SYSTEM_METADATA_LIFECYCLE = {name[0].lower() + name[1:]: name for name in LIFECYCLE_TAGS}
CHAT_COMPLETION = "chat-completion"
RETIREMENT_WARNING_DAYS = 30
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def lifecycle_dates(tags: Mapping[str, Any] | None, model: str = "") -> dict[str, date]:
    """The lifecycle tags present, as dates; BackendError naming the tag when one is not a date."""
    found: dict[str, date] = {}
    lowered = {str(k).lower(): v for k, v in (tags or {}).items()}
    for name in LIFECYCLE_TAGS:
        raw = lowered.get(name.lower())
        if raw in (None, ""):
            continue
        text = str(raw).strip()
        try:
            if not _DATE_RE.match(text):
                raise ValueError(text)
            found[name] = date.fromisoformat(text[:10])
        except ValueError:
            where = f" of foundation model {model}" if model else ""
            raise BackendError(f"tag {name}{where} is not an ISO date (YYYY-MM-DD): {_clip(raw)!r}") from None
    return found


def literal_tag(tags: Mapping[str, str] | None, name: str, expected: type, model: str = "") -> Any:
    """The tag's Python literal (None when the tag is absent); BackendError when it is malformed."""
    if not tags or name not in tags or tags[name] in (None, ""):
        return None
    raw = tags[name]
    where = f" of foundation model {model}" if model else ""
    try:
        value = ast.literal_eval(raw) if isinstance(raw, str) else raw
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise BackendError(f"tag {name}{where} is not a valid Python literal: {_clip(raw)!r}") from None
    if expected is list and isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, expected):
        raise BackendError(f"tag {name}{where} must be a {expected.__name__}, got {type(value).__name__}: {_clip(raw)!r}")
    if expected is list and not all(isinstance(v, str) for v in value):
        raise BackendError(f"tag {name}{where} must list instance type names (strings): {_clip(raw)!r}")
    if expected is dict and not all(isinstance(k, str) for k in value):
        raise BackendError(f"tag {name}{where} must map parameter names (strings) to values: {_clip(raw)!r}")
    return value


def _section(system_metadata: Mapping[str, Any] | None, key: str, model: str) -> dict[str, Any]:
    """A mapping of ``system_metadata`` (served as a JSON string, or a mapping); {} when absent."""
    raw = (system_metadata or {}).get(key)
    if raw in (None, "", {}):
        return {}
    value = raw
    if isinstance(raw, str):
        try:
            value = json.loads(raw)
        except ValueError:
            raise BackendError(f"system_metadata.{key} of foundation model {model} is not a JSON object: {_clip(raw)!r}") from None
    if not isinstance(value, Mapping):
        raise BackendError(f"system_metadata.{key} of foundation model {model} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _name_list(raw: Any, where: str) -> list[str] | None:
    """A list of names (a list, or a Python/JSON list literal in a string); None when absent."""
    if raw in (None, ""):
        return None
    value = raw
    if isinstance(raw, str):
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise BackendError(f"{where} is not a list: {_clip(raw)!r}") from None
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BackendError(f"{where} must list names (strings): {_clip(raw)!r}")
    return value


def system_metadata_facts(system_metadata: Mapping[str, Any] | None, model: str = "") -> dict[str, Any]:
    """Lifecycle dates, compute lists and fine-tuning tasks from ``system_metadata`` (only those present)."""
    label = model or "?"
    facts: dict[str, Any] = {}
    deprecation = _section(system_metadata, "deprecation", label)
    lifecycle = {SYSTEM_METADATA_LIFECYCLE[k]: v for k, v in deprecation.items() if k in SYSTEM_METADATA_LIFECYCLE}
    try:
        dates = lifecycle_dates(lifecycle, model)
    except BackendError as exc:
        raise BackendError(f"system_metadata.deprecation: {exc}") from None
    if dates:
        facts["lifecycle"] = dates
    computes = _section(system_metadata, "supportedComputes", label)
    for key, field in (("finetuneComputes", "finetune_compute_allow_list"), ("inferenceComputes", "inference_compute_allow_list")):
        found = _name_list(computes.get(key), f"system_metadata.supportedComputes.{key} of foundation model {label}")
        if found is not None:
            facts[field] = found
    tasks = _section(system_metadata, "tasks", label)
    found = _name_list(tasks.get("fineTuningTasks"), f"system_metadata.tasks.fineTuningTasks of foundation model {label}")
    if found is not None:
        facts["finetuning_tasks"] = found
    return facts


def _clip(raw: Any, limit: int = 120) -> str:
    text = str(raw)
    return text if len(text) <= limit else text[:limit] + "..."


@dataclasses.dataclass(frozen=True)
class FoundationModel:
    """What the app needs from the registry's foundation model."""

    id: str  # azureml://registries/<registry>/models/<name>/versions/<version>, the pipeline's mlflow_model_path
    name: str
    version: str
    finetune_compute_allow_list: list[str] | None = None
    inference_compute_allow_list: list[str] | None = None
    model_specific_defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    lifecycle: dict[str, date] = dataclasses.field(default_factory=dict)  # LIFECYCLE_TAGS present on the model
    finetuning_tasks: list[str] | None = None  # system_metadata.tasks.fineTuningTasks (None: not published)
    archived: bool = False  # the registry's isArchived

    @property
    def label(self) -> str:
        return f"{self.name}:{self.version}"

    def check_lifecycle(self, kind: str, today: date) -> str | None:
        """Refuse ``kind`` ("finetune" or "inference") on or after its retirement date.

        Returns a warning (with the date) from the deprecation date on, or within
        RETIREMENT_WARNING_DAYS of retirement; None when the model is not near its end.
        """
        prefix = {"finetune": "Finetune", "inference": "Inference"}[kind]
        what = {"finetune": "fine-tuning", "inference": "deployment"}[kind]
        retired = self.lifecycle.get(f"{prefix}RetirementDate")
        deprecated = self.lifecycle.get(f"{prefix}DeprecationDate")
        if retired is not None and today >= retired:
            raise BackendError(
                f"foundation model {self.label} was retired for {what} on {retired.isoformat()} "
                f"(registry lifecycle date {prefix}RetirementDate): Azure ML refuses it after queueing. "
                "Choose a current model or version (FOUNDATION_MODEL_NAME / FOUNDATION_MODEL_VERSION)"
            )
        if retired is not None and today >= retired - timedelta(days=RETIREMENT_WARNING_DAYS):
            return f"foundation model {self.label} retires for {what} on {retired.isoformat()} (in {(retired - today).days} days)"
        if deprecated is not None and today >= deprecated:
            until = f", retirement {retired.isoformat()}" if retired else ""
            return f"foundation model {self.label} is deprecated for {what} since {deprecated.isoformat()}{until}"
        return None

    @classmethod
    def from_tags(cls, id: str, name: str, version: str, tags: Mapping[str, str] | None,
                  system_metadata: Mapping[str, Any] | None = None, *, archived: bool = False) -> FoundationModel:
        """From the registry's tags and ``system_metadata`` (which wins where it has a value)."""
        label = f"{name}:{version}"
        facts = system_metadata_facts(system_metadata, label)
        finetune = literal_tag(tags, FINETUNE_ALLOW_LIST_TAG, list, label)
        inference = literal_tag(tags, INFERENCE_ALLOW_LIST_TAG, list, label)
        return cls(
            id=id,
            name=name,
            version=str(version),
            finetune_compute_allow_list=facts.get("finetune_compute_allow_list", finetune),
            inference_compute_allow_list=facts.get("inference_compute_allow_list", inference),
            model_specific_defaults=literal_tag(tags, MODEL_SPECIFIC_DEFAULTS_TAG, dict, label) or {},
            lifecycle={**lifecycle_dates(tags, label), **facts.get("lifecycle", {})},
            finetuning_tasks=facts.get("finetuning_tasks"),
            archived=archived,
        )

    def check_finetuning_task(self) -> None:
        """Refuse a model whose published fine-tuning tasks do not include chat completion."""
        tasks = self.finetuning_tasks
        if tasks is not None and CHAT_COMPLETION not in tasks:
            raise BackendError(
                f"foundation model {self.label} does not support {CHAT_COMPLETION} fine-tuning "
                f"(system_metadata.tasks.fineTuningTasks: {', '.join(tasks) or 'none'}); set FOUNDATION_MODEL_NAME"
            )

    def check_inference_instance(self, instance_type: str) -> None:
        """The notebook only prints a hint; unattended, deploying to a size the model does not support is an error."""
        allowed = self.inference_compute_allow_list
        if allowed is not None and instance_type.lower() not in {a.lower() for a in allowed}:
            raise BackendError(
                f"inference instance type {instance_type} is not in the inference allow list of {self.name}: "
                f"{', '.join(allowed)} (set INFERENCE_INSTANCE_TYPE)"
            )


# Model versions are positive integers (Azure ML); the app keeps them within a signed 32-bit
# integer, which the cookbook's epoch-seconds version also is (until 2038), so nothing that parses
# a version as an int32 can overflow.
MAX_MODEL_VERSION = 2**31 - 1
VERSION_PROBES = 10  # later seconds tried when another job's model holds this job's version


def registered_model_version(job_name: str, job_created_at: datetime | None) -> str:
    """The fine-tuned model's version for ``job_name``: the same job always gives the same version.

    As the cookbook's ``timestamp`` version, it is the job's creation time in epoch seconds:
    numeric, a safe positive integer (:data:`MAX_MODEL_VERSION`), increasing with each new job (the
    app compares versions to find the newest model), and fixed for a job, so a repeated completion
    event registers nothing new (two jobs created in the same second: ``register_model`` takes the
    next free second). Without a creation time (never seen for a real job) a number derived from
    the name is used.
    """
    if job_created_at is not None:
        seconds = int(job_created_at.timestamp())
        if 0 < seconds <= MAX_MODEL_VERSION - VERSION_PROBES:
            return str(seconds)
    digest = hashlib.sha256(job_name.encode()).hexdigest()
    return str(int(digest[:12], 16) % 900_000_000 + 100_000_000)
