"""One typed, frozen settings object, read once from the environment.

Values come from the process environment and, when the app runs locally, from the
``Values`` of ``local.settings.json`` (the environment wins, as under Core Tools).
Every setting has its environment name, default and meaning in ``SPECS`` so that the
docs/configuration.md, the local host (``%NAME%`` binding expressions) and validation share one table.
Tests swap the object with :func:`use_settings` instead of patching ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# Azure ML asset names: letters, digits, '-', '_' and '.', starting with a letter or digit.
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")

LOCAL_DEV_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)
LOCAL_WORKSPACE_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/local"
    "/providers/Microsoft.MachineLearningServices/workspaces/local"
)


# Set by the platform on every Azure Functions / App Service instance (App Service "Environment variables
# and app settings" reference). CONTAINER_NAME, which Linux Consumption also sets, is not used: Docker
# and dev containers set it too, and a dev box must keep its Azurite default.
AZURE_HOST_MARKERS = ("WEBSITE_INSTANCE_ID", "WEBSITE_SITE_NAME")
STORAGE = "AzureWebJobsStorage"


def running_in_azure(environ: Mapping[str, str] | None = None) -> str | None:
    """The platform variable that says the app runs in Azure (None locally)."""
    env = os.environ if environ is None else environ
    return next((name for name in AZURE_HOST_MARKERS if env.get(name)), None)


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (use true or false)")


def _int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None


def _json_obj(name: str, raw: str) -> dict[str, Any]:
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


def _data_policy(name: str, raw: str) -> dict[str, str]:
    """``report`` / ``redact`` / ``reject`` for every collection, or a JSON object collection -> policy."""
    text = raw.strip() or "report"
    if not text.startswith("{"):
        value: dict[str, Any] = {"*": text}
    else:
        value = _json_obj(name, text)
    for collection, policy in value.items():
        if policy not in DATA_POLICIES:
            raise SettingsError(f"{name}[{collection!r}]={policy!r} is not one of: {', '.join(DATA_POLICIES)}")
    return {"*": "report", **{str(k): str(v) for k, v in value.items()}}


def _at_least_one(name: str, raw: str) -> int:
    value = _int(name, raw)
    if value < 1:
        raise SettingsError(f"{name}={raw!r} must be at least 1")
    return value


def _parallel_jobs(name: str, raw: str) -> int:
    if not raw.strip():
        # Half the cores, at least one: one local LoRA fine-tune keeps about two cores busy.
        return max(1, (os.cpu_count() or 1) // 2)
    value = _int(name, raw)
    if value < 1:
        raise SettingsError(f"{name}={raw!r} must be at least 1")
    return value


def _str(name: str, raw: str) -> str:
    return raw


def _opt(name: str, raw: str) -> str | None:
    return raw or None


def _opt_float(name: str, raw: str) -> float | None:
    return _float(name, raw) if raw.strip() else None


@dataclasses.dataclass(frozen=True)
class Spec:
    env: str
    default: str | None  # None: required (when the condition in _required applies)
    parse: Callable[[str, str], Any]
    doc: str
    shown: str | None = None  # the default as docs/configuration.md shows it, where the value itself says little

    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        return "(empty)" if self.default == "" else "(required)" if self.default is None else f"`{self.default}`"


# field name -> spec. Order is the order of docs/configuration.md (generated: python -m scripts.settings_table).
SPECS: dict[str, Spec] = {
    # --- app and storage
    "ml_backend": Spec("ML_BACKEND", "local", _str, "Which ML backend the app drives: `local` (embedded workspace) or `azureml`."),
    "storage_connection": Spec("AzureWebJobsStorage", LOCAL_DEV_STORAGE, _str, "Storage connection string, Azurite by default locally. In Azure do not set it at all (not even empty: the blob trigger's SDK binding then fails with `Invalid URL: https://`); there it has no default and the identity-based settings below are used.", shown='`Azurite on 127.0.0.1:10000-10002` (none in Azure)'),
    "storage_account_name": Spec("AzureWebJobsStorage__accountName", "", _str, "Identity-based storage: account name (stands for the three service URIs below when they are not set)."),
    "storage_blob_service_uri": Spec("AzureWebJobsStorage__blobServiceUri", "", _str, "Identity-based storage: blob endpoint, e.g. `https://<account>.blob.core.windows.net` (read by the blob binding extension and the app)."),
    "storage_queue_service_uri": Spec("AzureWebJobsStorage__queueServiceUri", "", _str, "Identity-based storage: queue endpoint (the Functions host's own storage)."),
    "storage_table_service_uri": Spec("AzureWebJobsStorage__tableServiceUri", "", _str, "Identity-based storage: table endpoint (the ledger)."),
    "storage_credential": Spec("AzureWebJobsStorage__credential", "", _str, "Identity-based storage: `managedidentity` to connect with a managed identity (with `AzureWebJobsStorage__clientId` for a user-assigned one)."),
    "storage_client_id": Spec("AzureWebJobsStorage__clientId", "", _str, "Identity-based storage: client id of the user-assigned identity (empty: `AZURE_CLIENT_ID`)."),
    "chat_data_container": Spec("CHAT_DATA_CONTAINER", "chat-data", _str, "Container watched for raw chat data uploads (never modified)."),
    "prepared_container": Spec("PREPARED_CONTAINER", "prepared", _str, "Container for prepared datasets (`datasets/<id>/train.jsonl`, `test.jsonl`, `report.json`)."),
    "ledger_table": Spec("LEDGER_TABLE", "ledger", _str, "Table Storage table holding the ledger of datasets, jobs, models and endpoints."),
    "function_key": Spec("FUNCTION_KEY", "", _str, "Local host only: when set, FUNCTION-level HTTP routes require it (`x-functions-key` header or `code=` query)."),
    # --- preparation
    "test_fraction": Spec("TEST_FRACTION", "0.1", _float, "Share of conversations put in the test split (deterministic by conversation hash)."),
    "min_valid_examples": Spec("MIN_VALID_EXAMPLES", "10", _int, "A dataset with fewer valid conversations is rejected and never submitted."),
    "max_invalid_share": Spec("MAX_INVALID_SHARE", "0.2", _float, "A dataset whose share of invalid lines is above this is rejected."),
    "report_error_cap": Spec("REPORT_ERROR_CAP", "200", _int, "At most this many line errors are listed in report.json (the rest are counted)."),
    "max_row_bytes": Spec("MAX_ROW_BYTES", str(8 << 20), _int, "Largest decoded size of one line or parquet row (bytes); a longer one is reported (`line_too_long`) and skipped without being held in memory."),
    "max_decoded_bytes": Spec("MAX_DECODED_BYTES", str(2 << 30), _int, "Largest decoded size of one upload (bytes, after gzip / parquet decoding); reading stops there and the file is rejected (`too_large`)."),
    "max_expansion_ratio": Spec("MAX_EXPANSION_RATIO", "100", _float, "Largest decoded / raw size ratio of an upload (gzip, parquet compression and dictionaries; chat text compresses 3-10x): past it, once more than 64 MiB are decoded, the file is rejected as a decompression bomb (`too_large`)."),
    "max_parquet_column_chunk_bytes": Spec("MAX_PARQUET_COLUMN_CHUNK_BYTES", str(128 << 20), _int, "Parquet: largest decoded size of one column of one row group (metadata, checked before decoding; a page is never bigger); write larger files with smaller row groups (pyarrow `row_group_size`)."),
    "data_policy": Spec("DATA_POLICY", "report", _data_policy, "Data quality gate (personal data, secrets, special tokens, near-duplicates, leakage): `report` (report only), `redact` (personal data and secrets masked in the prepared copy, special tokens defused; the raw upload is never changed), or `reject` (any finding rejects the upload); or a JSON object collection -> one of those (`*` for the rest)."),
    "near_duplicate_threshold": Spec("NEAR_DUPLICATE_THRESHOLD", "0.8", _float, "Data quality gate: estimated Jaccard similarity (MinHash LSH, word 3-grams) from which two conversations count as near-duplicates (within an upload, and against the collection's held-out evaluation set)."),
    # --- fine-tuning (both backends)
    "experiment_name": Spec("EXPERIMENT_NAME", "chat-finetune-autopilot", _str, "Experiment the fine-tuning jobs are submitted under."),
    "finetuned_model_name": Spec("FINETUNED_MODEL_NAME", "", _str, "Registered name of the fine-tuned model (default: `<base model>-chat-ft`)."),
    "finetune_params": Spec("FINETUNE_PARAMS", "", _json_obj, "JSON object of fine-tune parameter overrides (component input names, e.g. `{\"num_train_epochs\": 1}`)."),
    # --- training: collections, corpus, coalescing, spend ceiling (shared.training)
    "training_mode": Spec("TRAINING_MODE", "corpus", _str, "`corpus`: a job trains on every accepted, not retired dataset of the upload's collection (the blob's first folder); `upload`: one job per uploaded file, on that file alone."),
    "coalesce_s": Spec("COALESCE_SECONDS", "60", _int, "Corpus mode: a collection's job is submitted this long after its first pending upload, so a burst of uploads becomes one job (0: at once). Submitted by the upload's own delivery when due at once, else at the due time by a message on queue `collection-submissions` (`COLLECTION_SUBMISSIONS`), `reconcile` being the safety net."),
    "collection_submissions": Spec("COLLECTION_SUBMISSIONS", "true", _bool, "Corpus mode: when a collection becomes pending, schedule its submission for its due time (a message on queue `collection-submissions`, visible at the due time) instead of leaving it to the next `reconcile` (false: `reconcile` only, the earlier behaviour)."),
    "collection_model_names": Spec("COLLECTION_MODEL_NAMES", "", _json_obj, "Corpus mode: JSON object collection -> fine-tuned model name (default: `default` -> `FINETUNED_MODEL_NAME`'s name, any other collection -> that name + `-<collection>`)."),
    "max_running_jobs": Spec("MAX_RUNNING_JOBS", "2", _int, "Corpus mode: at most this many fine-tuning jobs run at once across collections (0: no limit); a due submission beyond it waits, pending."),
    "finetune_budget_usd": Spec("FINETUNE_BUDGET_USD", "", _opt_float, "Corpus mode: monthly (UTC calendar month) fine-tuning budget in USD, counted from the jobs' real run times x `INSTANCE_HOURLY_PRICES`; once spent, submissions wait, pending (empty: no budget)."),
    "eventgrid_webhook_url": Spec("EVENTGRID_WEBHOOK_URL", "", _str, "Local backend: where the workspace posts its job events (the app's Event Grid webhook); empty: the `on_job_event` webhook of the local host on `LOCAL_HOST_PORT`.", shown='(empty: derived)'),
    "local_host_port": Spec("LOCAL_HOST_PORT", "7071", _int, "Local stack: port of the local Functions host (`make up`, `python -m devhost.host`); the job-event webhook follows it unless `EVENTGRID_WEBHOOK_URL` is set."),
    # --- local workspace
    "local_workspace_dir": Spec("LOCAL_WORKSPACE_DIR", str(PROJECT_ROOT / ".local" / "workspace"), _str, "Folder of the local workspace (jobs, MLflow database, models, endpoint records).", shown='`./.local/workspace`'),
    "local_base_model": Spec("LOCAL_BASE_MODEL", "smollm2", _str, "Local base model: `smollm2` (SmolLM2-135M-Instruct) or `tiny-random` (fast tests)."),
    "local_workspace_id": Spec("LOCAL_WORKSPACE_ID", LOCAL_WORKSPACE_ID, _str, "Resource id the local workspace uses as its Event Grid topic.", shown='`a fixed local resource id`'),
    "local_model_cache": Spec("LOCAL_MODEL_CACHE", str(PROJECT_ROOT / ".local" / "models"), _str, "Local workspace: folder caching the base models as plain transformers folders (shared by workspaces, built once).", shown='`./.local/models`'),
    "local_max_parallel_jobs": Spec("LOCAL_MAX_PARALLEL_JOBS", "", _parallel_jobs, "Local workspace: at most this many fine-tunes train at once; the others wait (`queued`) and start in submission order (empty: half the CPU cores, at least 1).", shown='(half the CPU cores, at least 1)'),
    # --- Azure ML
    "azure_subscription_id": Spec("AZURE_SUBSCRIPTION_ID", "", _str, "Azure ML backend: subscription of the workspace (or use `AZURE_ML_CONFIG`)."),
    "azure_resource_group": Spec("AZURE_RESOURCE_GROUP", "", _str, "Azure ML backend: resource group of the workspace."),
    "azure_ml_workspace": Spec("AZURE_ML_WORKSPACE", "", _str, "Azure ML backend: workspace name."),
    "azure_ml_config": Spec("AZURE_ML_CONFIG", "", _str, "Azure ML backend: path of a workspace `config.json` instead of the three settings above."),
    "azure_client_id": Spec("AZURE_CLIENT_ID", "", _str, "Client id of the user-assigned managed identity (empty: DefaultAzureCredential's chain)."),
    "azure_ml_registry": Spec("AZURE_ML_REGISTRY", "azureml", _str, "Registry holding the foundation model and the `chat_completion_pipeline` component."),
    "foundation_model_name": Spec("FOUNDATION_MODEL_NAME", "Phi-4", _str, "Foundation model to fine-tune (registry model name; the cookbook's Phi-3-mini-4k-instruct is retired)."),
    "foundation_model_version": Spec("FOUNDATION_MODEL_VERSION", "", _str, "Pinned foundation model version (empty: label latest)."),
    "pipeline_component_version": Spec("PIPELINE_COMPONENT_VERSION", "", _str, "Pinned `chat_completion_pipeline` version (empty: label latest)."),
    "azure_ml_datastore": Spec("AZURE_ML_DATASTORE", "autopilot_prepared", _str, "Workspace datastore on the prepared-data container (the deployment creates `autopilot_prepared`; checked before the first submission); train/test are passed as `azureml://datastores/<it>/paths/...`."),
    "finetune_compute": Spec("FINETUNE_COMPUTE", "", _str, "Compute cluster for fine-tuning (empty: serverless with `FINETUNE_INSTANCE_TYPE`)."),
    "finetune_instance_type": Spec("FINETUNE_INSTANCE_TYPE", "Standard_NC24ads_A100_v4", _str, "Serverless fine-tuning instance type (checked against the model's fine-tune allow list and retired sizes)."),
    "inference_instance_type": Spec("INFERENCE_INSTANCE_TYPE", "Standard_NC24ads_A100_v4", _str, "Online deployment instance type (checked against the model's inference allow list and retired sizes before fine-tuning starts)."),
    "inference_instance_count": Spec("INFERENCE_INSTANCE_COUNT", "1", _int, "Online deployment instance count."),
    "endpoint_auth_mode": Spec("ENDPOINT_AUTH_MODE", "key", _str, "Online endpoint auth mode: `key`, `aml_token` or `aad_token`."),
    # --- evaluation: held-out set, candidate vs champion, promotion rule (shared.evaluation)
    "eval_fraction": Spec("EVAL_FRACTION", "0.1", _float, "Corpus mode: conversations whose digest is in the top this share of the digest space are eval candidates, held out of training (0: no carved eval set; `TEST_FRACTION` + this must stay below 1)."),
    "eval_max_conversations": Spec("EVAL_MAX_CONVERSATIONS", "50", _int, "Corpus mode: at most this many eval candidates (the highest digests) form a collection's held-out eval set; the others are trained on (0: no carved eval set). Golden files under `<collection>/eval/` come on top."),
    "eval_primary_metric": Spec("EVAL_PRIMARY_METRIC", "rouge_l", _str, "The metric the promotion rule compares: `f1`, `rouge_l`, `bleu`, `chrf` (0..1; azure-ai-evaluation F1/ROUGE-L, sacrebleu BLEU/chrF) or, with a judge, `judge_similarity` / `judge_relevance` (1..5)."),
    "eval_margin": Spec("EVAL_MARGIN", "0.02", _float, "A candidate is promoted only when its primary metric is not below the champion's by more than this (and it keeps every rule)."),
    "eval_floors": Spec("EVAL_FLOORS", '{"rouge_l": 0.05}', _json_obj, "JSON object metric -> minimum: the first version of a collection (no champion) is promoted only when it meets every floor (and keeps every rule)."),
    "eval_rules": Spec("EVAL_RULES", "", _json_obj, "JSON object collection (or `*`) -> list of rules every candidate answer must keep: `{\"must\": regex}`, `{\"must_not\": regex}`, `{\"json\": true}`, `{\"min_chars\": n, \"max_chars\": m}`, each with optional `name` and `min_pass_rate` (default 1)."),
    "eval_parallelism": Spec("EVAL_PARALLELISM", "2", _int, "At most this many eval answers are requested at once (candidate and champion together)."),
    "eval_time_budget_s": Spec("EVAL_TIME_BUDGET_S", "600", _float, "One evaluation call stops asking for answers after this many seconds; the answers so far are stored and the next call (follow-up or `reconcile`) goes on from them."),
    "eval_max_new_tokens": Spec("EVAL_MAX_NEW_TOKENS", "64", _int, "max_tokens of each eval answer (the rollout's answer callables pass it to the deployments)."),
    "eval_judge_endpoint": Spec("EVAL_JUDGE_ENDPOINT", "", _str, "Optional judge model: base URL of an OpenAI-compatible API (e.g. `https://host/v1`); with `EVAL_JUDGE_MODEL` it adds `judge_similarity` and `judge_relevance` (azure-ai-evaluation's SimilarityEvaluator / RelevanceEvaluator)."),
    "eval_judge_model": Spec("EVAL_JUDGE_MODEL", "", _str, "Optional judge model: the model (deployment) name the judge endpoint serves."),
    "eval_judge_api_key": Spec("EVAL_JUDGE_API_KEY", "", _str, "Optional judge model: API key of the judge endpoint (empty: none sent)."),
    # --- job events and deployment
    "quality_gate": Spec("QUALITY_GATE", "false", _bool, "Deploy only when the job's test loss beat the base model's (where the backend reports it)."),
    "delete_replaced_endpoints": Spec("DELETE_REPLACED_ENDPOINTS", "false", _bool, "Delete the previous endpoint at once when a newer model becomes active (else the janitor does it when idle)."),
    "reconcile_schedule": Spec("RECONCILE_SCHEDULE", "0 */5 * * * *", _str, "NCRONTAB schedule of the `reconcile` timer."),
    "endpoint_followups": Spec("ENDPOINT_FOLLOWUPS", "true", _bool, "Check a deployment or deletion in flight within seconds (queue `endpoint-followups`: every 2 s for half a minute, then backed off to every 30 s) instead of only at the next `reconcile`."),
    # --- rollout of a new version beside the serving one (shared.rollout)
    "rollout_candidates": Spec("ROLLOUT_CANDIDATES", "true", _bool, "Deploy a new version of a model as a second deployment of the endpoint that serves it (0% traffic), judge it against the serving one, canary it, and roll it back by itself on regression; a collection's first version is judged against `EVAL_FLOORS` before it takes traffic. false: every version gets its own endpoint and takes over at once, unjudged (the earlier behaviour)."),
    "canary_percent": Spec("CANARY_PERCENT", "10", _int, "Share of live traffic (1-50%) a promoted candidate takes during its canary."),
    "canary_minutes": Spec("CANARY_MINUTES", "10", _float, "How long the canary lasts before the candidate takes 100% (if it did not regress)."),
    "canary_requests": Spec("CANARY_REQUESTS", "0", _int, "End the canary earlier, once the candidate has served this many live requests (0: time only)."),
    "canary_min_requests": Spec("CANARY_MIN_REQUESTS", "5", _int, "Requests the candidate must have served before its error rate and latency are compared (fewer: no verdict yet, unless its deployment failed)."),
    "canary_max_error_rate_increase": Spec("CANARY_MAX_ERROR_RATE_INCREASE", "0.05", _float, "Regression: the candidate's error rate (5xx or no answer) exceeds the champion's by more than this."),
    "canary_max_p95_ratio": Spec("CANARY_MAX_P95_RATIO", "2.0", _float, "Regression: the candidate's p95 latency exceeds the champion's times this."),
    "submit_claim_lease_s": Spec("SUBMIT_CLAIM_LEASE_SECONDS", "300", _int, "A delivery's claim on submitting a dataset is honoured this long; after it, a crashed delivery's submission is finished by the next delivery or `reconcile`."),
    # --- scoring
    "scoring_max_request_bytes": Spec("SCORING_MAX_REQUEST_BYTES", "262144", _int, "Largest scoring request body accepted."),
    "scoring_max_new_tokens": Spec("SCORING_MAX_NEW_TOKENS", "1024", _int, "Upper bound for max_new_tokens / max_tokens."),
    "scoring_redeploy_on_demand": Spec("SCORING_REDEPLOY_ON_DEMAND", "true", _bool, "When a model has no live endpoint, a scoring call starts redeploying its last version."),
    "scoring_retry_after_s": Spec("SCORING_RETRY_AFTER_S", "60", _int, "Retry-After (seconds) sent with 503 while an endpoint is (re)deploying, until the app has deployment times to estimate it from."),
    "activity_flush_s": Spec("ACTIVITY_FLUSH_S", "30", _int, "Scoring records an endpoint's last activity at most once per this many seconds per worker."),
    "scoring_route_max_stale_s": Spec("SCORING_ROUTE_MAX_STALE_S", "300", _int, "While the ledger is unreachable, scoring keeps using a known route this many seconds after it was last read from the ledger."),
    "max_live_endpoints": Spec("MAX_LIVE_ENDPOINTS", "4", _int, "At most this many endpoints and deployments live (provisioning or serving, candidates beside a champion included); a deployment that would pass it is not started and its model's record says why (`shared.endpoints.capacity`)."),
    "scoring_max_streams": Spec("SCORING_MAX_STREAMS", "8", _at_least_one, "Streamed answers (`stream: true`) one worker relays at once per endpoint; past it a client gets 429 with Retry-After."),
    "scoring_stream_idle_s": Spec("SCORING_STREAM_IDLE_S", "60", _at_least_one, "A stream ends (and its upstream is closed) when the endpoint sends nothing, or the client reads nothing, for this many seconds."),
    # --- endpoint healing
    "endpoint_heal_attempts": Spec("ENDPOINT_HEAL_ATTEMPTS", "3", _int, "Redeploys the health loop tries for an unhealthy or failed endpoint before it records it failed for good."),
    "endpoint_heal_backoff_s": Spec("ENDPOINT_HEAL_BACKOFF_S", "30", _int, "Wait before the second heal redeploy; doubled for each further one."),
    # --- idle janitor
    "janitor_schedule": Spec("JANITOR_SCHEDULE", "0 */10 * * * *", _str, "NCRONTAB schedule of the `delete_idle_endpoints` timer."),
    "idle_endpoint_minutes": Spec("IDLE_ENDPOINT_MINUTES", "60", _float, "An endpoint with no activity for longer than this is deleted."),
    "idle_grace_minutes": Spec("IDLE_GRACE_MINUTES", "15", _float, "Never delete an endpoint within this many minutes after it became active."),
    "janitor_keep_latest": Spec("JANITOR_KEEP_LATEST", "false", _bool, "Never delete a model's active endpoint."),
    "janitor_dry_run": Spec("JANITOR_DRY_RUN", "false", _bool, "Report what would be deleted, delete nothing."),
    "instance_hourly_prices": Spec("INSTANCE_HOURLY_PRICES", '{"Standard_NC24ads_A100_v4": 3.67, "local": 0.0}', _json_obj, "JSON object: USD per instance-hour by instance type, for the janitor's savings estimate (the retired NCv3 sizes are not priced).", shown='`NC24ads_A100_v4 $3.67, local $0`'),
    "training_tokens_per_second": Spec("TRAINING_TOKENS_PER_SECOND", '{"Standard_NC24ads_A100_v4": 2500, "local": 400}', _json_obj, "JSON object: training throughput (tokens per second per instance) by instance type, for the report's cost forecast (tokens x epochs / throughput x `INSTANCE_HOURLY_PRICES`) that the spend guard adds to what is spent."),
    # --- observability
    "appinsights_connection_string": Spec("APPLICATIONINSIGHTS_CONNECTION_STRING", "", _str, "Application Insights connection string: when set, the functions export OpenTelemetry spans (one trace per upload); empty: nothing is sent anywhere."),
    "appinsights_authentication_string": Spec("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "", _str, "`Authorization=AAD;ClientId=<client id>`: export with that managed identity (Application Insights with local auth off)."),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    ml_backend: str
    storage_connection: str
    storage_account_name: str
    storage_blob_service_uri: str
    storage_queue_service_uri: str
    storage_table_service_uri: str
    storage_credential: str
    storage_client_id: str
    chat_data_container: str
    prepared_container: str
    ledger_table: str
    function_key: str
    test_fraction: float
    eval_fraction: float
    eval_max_conversations: int
    eval_primary_metric: str
    eval_margin: float
    eval_floors: dict[str, Any]
    eval_rules: dict[str, Any]
    eval_parallelism: int
    eval_time_budget_s: float
    eval_max_new_tokens: int
    eval_judge_endpoint: str
    eval_judge_model: str
    eval_judge_api_key: str
    min_valid_examples: int
    max_invalid_share: float
    report_error_cap: int
    max_row_bytes: int
    max_decoded_bytes: int
    max_expansion_ratio: float
    max_parquet_column_chunk_bytes: int
    data_policy: dict[str, str]
    near_duplicate_threshold: float
    experiment_name: str
    finetuned_model_name: str
    finetune_params: dict[str, Any]
    training_mode: str
    coalesce_s: int
    collection_submissions: bool
    collection_model_names: dict[str, Any]
    max_running_jobs: int
    finetune_budget_usd: float | None
    eventgrid_webhook_url: str
    local_host_port: int
    local_workspace_dir: str
    local_base_model: str
    local_workspace_id: str
    local_model_cache: str
    local_max_parallel_jobs: int
    azure_subscription_id: str
    azure_resource_group: str
    azure_ml_workspace: str
    azure_ml_config: str
    azure_client_id: str
    azure_ml_registry: str
    foundation_model_name: str
    foundation_model_version: str
    pipeline_component_version: str
    azure_ml_datastore: str
    finetune_compute: str
    finetune_instance_type: str
    inference_instance_type: str
    inference_instance_count: int
    endpoint_auth_mode: str
    quality_gate: bool
    delete_replaced_endpoints: bool
    reconcile_schedule: str
    endpoint_followups: bool
    rollout_candidates: bool
    canary_percent: int
    canary_minutes: float
    canary_requests: int
    canary_min_requests: int
    canary_max_error_rate_increase: float
    canary_max_p95_ratio: float
    submit_claim_lease_s: int
    scoring_max_request_bytes: int
    scoring_max_new_tokens: int
    scoring_redeploy_on_demand: bool
    scoring_retry_after_s: int
    activity_flush_s: int
    scoring_route_max_stale_s: int
    max_live_endpoints: int
    scoring_max_streams: int
    scoring_stream_idle_s: int
    endpoint_heal_attempts: int
    endpoint_heal_backoff_s: int
    janitor_schedule: str
    idle_endpoint_minutes: float
    idle_grace_minutes: float
    janitor_keep_latest: bool
    janitor_dry_run: bool
    instance_hourly_prices: dict[str, Any]
    training_tokens_per_second: dict[str, Any]
    appinsights_connection_string: str
    appinsights_authentication_string: str

    @property
    def base_model_name(self) -> str:
        """The base model this app fine-tunes with the selected backend."""
        if self.ml_backend == "local":
            return "SmolLM2-135M-Instruct" if self.local_base_model == "smollm2" else f"local-{self.local_base_model}"
        return self.foundation_model_name

    @property
    def model_name(self) -> str:
        """Registered name of the fine-tuned model."""
        if self.finetuned_model_name:
            return self.finetuned_model_name
        return f"{self.base_model_name.lower()}-chat-ft"

    @property
    def workspace_resource_id(self) -> str:
        """Resource id of the workspace whose events the app trusts."""
        if self.ml_backend == "local":
            return self.local_workspace_id
        return (
            f"/subscriptions/{self.azure_subscription_id}/resourceGroups/{self.azure_resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{self.azure_ml_workspace}"
        )

    def data_policy_for(self, collection: str) -> str:
        """``report``, ``redact`` or ``reject``: the data quality policy of a collection (``DATA_POLICY``)."""
        return self.data_policy.get(collection) or self.data_policy.get("*") or "report"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def local_settings_values(path: Path | None = None) -> dict[str, str]:
    """``Values`` of local.settings.json (empty when the file is absent)."""
    path = path or PROJECT_ROOT / "local.settings.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{path} is not valid JSON: {exc}") from None
    values = data.get("Values", {}) if isinstance(data, dict) else {}
    if not isinstance(values, dict):
        raise SettingsError(f"{path}: 'Values' must be an object")
    return {str(k): str(v) for k, v in values.items()}


def app_setting(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Value of an app setting by its environment name, falling back to the defaults table.

    The local host uses this to resolve ``%NAME%`` binding expressions.
    """
    env = dict(local_settings_values()) if environ is None else {}
    env.update(os.environ if environ is None else environ)
    if name in env:
        return env[name]
    for spec in SPECS.values():
        if spec.env == name:
            return spec.default
    return None


def load_settings(environ: Mapping[str, str] | None = None, local_settings: Path | None = None) -> Settings:
    """Read and validate every setting; raise SettingsError naming the first bad variable."""
    env: dict[str, str] = {}
    if environ is None:
        env.update(local_settings_values(local_settings))
        env.update(os.environ)
    else:
        env.update(environ)
    in_azure = running_in_azure(env)
    values: dict[str, Any] = {}
    for field, spec in SPECS.items():
        raw = env.get(spec.env)
        if raw is None:
            # In Azure the storage has no default: never fall back to Azurite on 127.0.0.1.
            raw = "" if in_azure and spec.env == STORAGE else (spec.default if spec.default is not None else "")
        values[field] = spec.parse(spec.env, raw)
    if not values["eventgrid_webhook_url"]:
        values["eventgrid_webhook_url"] = local_webhook_url(values["local_host_port"])
    settings = Settings(**values)
    _validate_storage(settings, present_empty=STORAGE in env and not env[STORAGE].strip(), in_azure=in_azure)
    _validate(settings)
    return settings


def _is_local_storage(connection: str) -> bool:
    text = connection.replace(" ", "").lower()
    return "usedevelopmentstorage=true" in text or "devstoreaccount1" in text or "127.0.0.1" in text or "localhost" in text


def _validate_storage(s: Settings, *, present_empty: bool, in_azure: str | None) -> None:
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


def local_webhook_url(port: int) -> str:
    """The local host's Event Grid webhook of ``on_job_event`` (where local job events go)."""
    return f"http://127.0.0.1:{port}/runtime/webhooks/eventgrid?functionName=on_job_event"


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


def _validate(s: Settings) -> None:
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


@functools.lru_cache(maxsize=1)
def _cached() -> Settings:
    return load_settings()


def get_settings() -> Settings:
    """The process-wide settings (read once)."""
    return _override if _override is not None else _cached()


def use_settings(settings: Settings | None) -> None:
    """Swap the process-wide settings (tests, the local host); None restores the environment's."""
    global _override
    _override = settings
    _cached.cache_clear()
