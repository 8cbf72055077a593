"""How a setting's text becomes a value, and when a value or a combination of them is refused.

``shared.settings`` declares every setting with one of these parsers (picked by its type unless the
declaration names one) and runs :func:`validate_storage` and :func:`validate` on what it read; each
refusal is a :class:`SettingsError` whose message names the variable.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.settings import Settings

STORAGE = "AzureWebJobsStorage"
# Azure ML asset names: letters, digits, '-', '_' and '.', starting with a letter or digit.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def parse_bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true or false)")


def parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None


def parse_float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


def parse_json_object(name: str, raw: str) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise SettingsError(f"{name} must be a JSON object, got {type(value).__name__}")
    return value


DATA_POLICIES = ("report", "redact", "reject")


def parse_data_policy(name: str, raw: str) -> dict[str, str]:
    """``report`` / ``redact`` / ``reject`` for every collection, or a JSON object collection -> policy."""
    text = raw.strip() or "report"
    if not text.startswith("{"):
        value: dict[str, Any] = {"*": text}
    else:
        value = parse_json_object(name, text)
    for collection, policy in value.items():
        if policy not in DATA_POLICIES:
            raise SettingsError(f"{name}[{collection!r}]={policy!r} is not one of: {', '.join(DATA_POLICIES)}")
    return {"*": "report", **{str(k): str(v) for k, v in value.items()}}


def parse_at_least_one(name: str, raw: str) -> int:
    value = parse_int(name, raw)
    if value < 1:
        raise SettingsError(f"{name}={raw!r} must be at least 1")
    return value


def parse_parallel_jobs(name: str, raw: str) -> int:
    if not raw.strip():
        # Half the cores, at least one: one local LoRA fine-tune keeps about two cores busy.
        return max(1, (os.cpu_count() or 1) // 2)
    value = parse_int(name, raw)
    if value < 1:
        raise SettingsError(f"{name}={raw!r} must be at least 1")
    return value


def parse_str(name: str, raw: str) -> str:
    return raw


def parse_optional_float(name: str, raw: str) -> float | None:
    return parse_float(name, raw) if raw.strip() else None


def _is_local_storage(connection: str) -> bool:
    text = connection.replace(" ", "").lower()
    return "usedevelopmentstorage=true" in text or "devstoreaccount1" in text or "127.0.0.1" in text or "localhost" in text


def validate_storage(s: Settings, *, present_empty: bool, in_azure: str | None) -> None:
    """One storage configuration that the blob binding extension, the ledger and the blob clients all read alike.

    The SDK-type blob binding (azurefunctions-extensions-bindings-blob) takes ``AzureWebJobsStorage``
    as a connection string whenever the variable exists, even empty; otherwise
    ``__serviceUri``/``__blobServiceUri``, or ``__accountName``; with ``__credential`` and
    ``__clientId`` it uses that user-assigned identity.
    """
    identity = s.storage_account_name or s.storage_blob_service_uri or s.storage_table_service_uri
    where = f" (running in Azure: {in_azure} is set)" if in_azure else ""
    if present_empty and identity:
        raise SettingsError(
            f"{STORAGE} is set but empty{where}: remove the setting; the blob trigger's binding reads it before "
            f"the identity-based {STORAGE}__blobServiceUri / __accountName and fails with 'Invalid URL: https://'"
        )
    if s.storage_credential and s.storage_credential.lower() != "managedidentity":
        raise SettingsError(f"{STORAGE}__credential={s.storage_credential!r}: the only supported value is managedidentity")
    if s.storage_connection:
        if in_azure and _is_local_storage(s.storage_connection):
            raise SettingsError(f"{STORAGE} points at local development storage (Azurite){where}: remove it and set "
                                f"{STORAGE}__blobServiceUri, __queueServiceUri, __tableServiceUri, __credential and __clientId")
        return
    if not identity:
        raise SettingsError(
            f"no storage configured{where}: set {STORAGE}__blobServiceUri, {STORAGE}__queueServiceUri and "
            f"{STORAGE}__tableServiceUri (or {STORAGE}__accountName) with {STORAGE}__credential=managedidentity"
        )
    for name, uri in (("blobServiceUri", s.storage_blob_service_uri), ("queueServiceUri", s.storage_queue_service_uri),
                      ("tableServiceUri", s.storage_table_service_uri)):
        if not uri and not s.storage_account_name:
            raise SettingsError(f"{STORAGE}__{name} is not set{where} (and no {STORAGE}__accountName stands for it)")
        if uri and not uri.startswith("https://"):
            raise SettingsError(f"{STORAGE}__{name}={uri!r} must be an https:// URL")



_TIMESPAN = re.compile(r"(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2})")
_CRON_FIELD = re.compile(r"[0-9A-Za-z*?/,\-]+")


def schedule_error(expression: str) -> str | None:
    """Why ``expression`` is not a timer schedule the Functions host accepts (None when it is one):
    NCRONTAB with six fields, seconds first (``0 */5 * * * *``), or a TimeSpan (``00:05:00``)."""
    text = expression.strip()
    span = _TIMESPAN.fullmatch(text)
    if span:
        if not any(int(g or 0) for g in span.groups()):
            return "the TimeSpan interval must be positive"
        return None
    fields = text.split()
    if len(fields) != 6:
        hint = " (a five-field cron has no seconds: put 0 first, e.g. '0 */5 * * * *')" if len(fields) == 5 else ""
        return f"an NCRONTAB schedule has six fields, seconds first; got {len(fields)}{hint}"
    bad = [f for f in fields if not _CRON_FIELD.fullmatch(f)]
    if bad:
        return f"field {bad[0]!r} is not an NCRONTAB field"
    try:  # the full check where croniter is installed (the local host uses it to schedule)
        from croniter import croniter
    except ImportError:
        return None
    if not croniter.is_valid(text, second_at_beginning=True):
        return "it is not a valid NCRONTAB expression (second minute hour day month day-of-week)"
    return None


def validate(s: Settings) -> None:
    if s.ml_backend not in {"local", "azureml"}:
        raise SettingsError(f"ML_BACKEND={s.ml_backend!r} is not one of: local, azureml")
    if not 0.0 < s.test_fraction < 1.0:
        raise SettingsError(f"TEST_FRACTION={s.test_fraction} must be between 0 and 1 (exclusive)")
    if not 0.0 <= s.eval_fraction < 1.0 or s.test_fraction + s.eval_fraction >= 1.0:
        raise SettingsError(f"EVAL_FRACTION={s.eval_fraction} must be 0 or more and below 1 - TEST_FRACTION ({1 - s.test_fraction:g})")
    if not 0 <= s.eval_max_conversations <= 100_000:
        raise SettingsError(f"EVAL_MAX_CONVERSATIONS={s.eval_max_conversations} must be between 0 and 100000")
    _validate_evaluation(s)
    if not 0.0 <= s.max_invalid_share <= 1.0:
        raise SettingsError(f"MAX_INVALID_SHARE={s.max_invalid_share} must be between 0 and 1")
    if s.min_valid_examples < 1:
        raise SettingsError(f"MIN_VALID_EXAMPLES={s.min_valid_examples} must be at least 1")
    for env_name, value in (("MAX_ROW_BYTES", s.max_row_bytes), ("MAX_DECODED_BYTES", s.max_decoded_bytes),
                            ("MAX_PARQUET_COLUMN_CHUNK_BYTES", s.max_parquet_column_chunk_bytes)):
        if value < 1024:
            raise SettingsError(f"{env_name}={value} must be at least 1024 (bytes)")
    if s.max_expansion_ratio < 1:
        raise SettingsError(f"MAX_EXPANSION_RATIO={s.max_expansion_ratio} must be at least 1")
    if not 0.0 < s.near_duplicate_threshold <= 1.0:
        raise SettingsError(f"NEAR_DUPLICATE_THRESHOLD={s.near_duplicate_threshold} must be above 0 and at most 1")
    if s.max_live_endpoints < 1:
        raise SettingsError(f"MAX_LIVE_ENDPOINTS={s.max_live_endpoints} must be at least 1")
    if s.endpoint_auth_mode not in {"key", "aml_token", "aad_token"}:
        raise SettingsError(f"ENDPOINT_AUTH_MODE={s.endpoint_auth_mode!r} is not one of: key, aml_token, aad_token")
    if not 1 <= s.canary_percent <= 50:
        raise SettingsError(f"CANARY_PERCENT={s.canary_percent} must be between 1 and 50")
    if s.canary_minutes <= 0 or s.canary_requests < 0 or s.canary_min_requests < 1:
        raise SettingsError("CANARY_MINUTES must be > 0, CANARY_REQUESTS >= 0 and CANARY_MIN_REQUESTS >= 1")
    if s.canary_min_p95_increase_ms < 0 or s.canary_latency_min_requests < 1:
        raise SettingsError("CANARY_MIN_P95_INCREASE_MS must be >= 0 and CANARY_LATENCY_MIN_REQUESTS >= 1")
    if s.local_base_model not in {"smollm2", "tiny-random"}:
        raise SettingsError(f"LOCAL_BASE_MODEL={s.local_base_model!r} is not one of: smollm2, tiny-random")
    if s.ml_backend == "azureml" and not s.azure_ml_config:
        for env_name, value in (
            ("AZURE_SUBSCRIPTION_ID", s.azure_subscription_id),
            ("AZURE_RESOURCE_GROUP", s.azure_resource_group),
            ("AZURE_ML_WORKSPACE", s.azure_ml_workspace),
        ):
            if not value:
                raise SettingsError(f"{env_name} is required when ML_BACKEND=azureml (or set AZURE_ML_CONFIG to a config.json)")
    if s.inference_instance_count < 1:
        raise SettingsError(f"INFERENCE_INSTANCE_COUNT={s.inference_instance_count} must be at least 1")
    if s.training_mode not in {"corpus", "upload"}:
        raise SettingsError(f"TRAINING_MODE={s.training_mode!r} is not one of: corpus, upload")
    if s.coalesce_s < 0:
        raise SettingsError(f"COALESCE_SECONDS={s.coalesce_s} must be 0 or more")
    if s.max_running_jobs < 0:
        raise SettingsError(f"MAX_RUNNING_JOBS={s.max_running_jobs} must be 0 (no limit) or more")
    if s.finetune_budget_usd is not None and s.finetune_budget_usd < 0:
        raise SettingsError(f"FINETUNE_BUDGET_USD={s.finetune_budget_usd} must be 0 or more (empty: no budget)")
    for collection, name in s.collection_model_names.items():
        if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
            raise SettingsError(f"COLLECTION_MODEL_NAMES[{collection!r}]={name!r} is not a valid model name "
                                "(1-255 letters, digits, '-', '_' or '.', starting with a letter or digit)")
    if s.idle_endpoint_minutes <= 0:
        raise SettingsError(f"IDLE_ENDPOINT_MINUTES={s.idle_endpoint_minutes} must be positive")
    for env_name, schedule in (("RECONCILE_SCHEDULE", s.reconcile_schedule), ("JANITOR_SCHEDULE", s.janitor_schedule)):
        problem = schedule_error(schedule)
        if problem:
            raise SettingsError(f"{env_name}={schedule!r}: {problem}")
    if not 1 <= s.local_host_port <= 65535:
        raise SettingsError(f"LOCAL_HOST_PORT={s.local_host_port} is not a TCP port (1-65535)")
    if s.ml_backend == "local" and s.finetune_params:
        from shared.backends.local_params import unknown_local_params

        unknown = unknown_local_params(s.finetune_params)
        if unknown:
            raise SettingsError(f"FINETUNE_PARAMS: {unknown}")


def _validate_evaluation(s: Settings) -> None:
    from shared.evaluation.metrics import JUDGE_METRICS, METRICS
    from shared.evaluation.rules import parse_rules

    judged = bool(s.eval_judge_endpoint and s.eval_judge_model)
    if bool(s.eval_judge_endpoint) != bool(s.eval_judge_model):
        raise SettingsError("EVAL_JUDGE_ENDPOINT and EVAL_JUDGE_MODEL are set together (a judge needs both) or not at all")
    available = METRICS if judged else tuple(m for m in METRICS if m not in JUDGE_METRICS)
    if s.eval_primary_metric not in available:
        raise SettingsError(f"EVAL_PRIMARY_METRIC={s.eval_primary_metric!r} is not one of: {', '.join(available)}"
                            + ("" if judged else " (judge metrics need EVAL_JUDGE_ENDPOINT and EVAL_JUDGE_MODEL)"))
    if s.eval_margin < 0:
        raise SettingsError(f"EVAL_MARGIN={s.eval_margin} must be 0 or more")
    for metric, floor in s.eval_floors.items():
        if metric not in available:
            raise SettingsError(f"EVAL_FLOORS[{metric!r}]: not one of: {', '.join(available)}")
        if isinstance(floor, bool) or not isinstance(floor, int | float):
            raise SettingsError(f"EVAL_FLOORS[{metric!r}]={floor!r} must be a number")
    try:
        parse_rules(s.eval_rules)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    if s.eval_parallelism < 1:
        raise SettingsError(f"EVAL_PARALLELISM={s.eval_parallelism} must be at least 1")
    if s.eval_time_budget_s <= 0:
        raise SettingsError(f"EVAL_TIME_BUDGET_S={s.eval_time_budget_s} must be positive")
    if s.eval_max_new_tokens < 1:
        raise SettingsError(f"EVAL_MAX_NEW_TOKENS={s.eval_max_new_tokens} must be at least 1")
    if s.eval_judge_endpoint and not s.eval_judge_endpoint.startswith(("http://", "https://")):
        raise SettingsError(f"EVAL_JUDGE_ENDPOINT={s.eval_judge_endpoint!r} must be an http(s):// URL")


_override: Settings | None = None
