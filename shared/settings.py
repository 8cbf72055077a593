"""One typed, frozen settings object, read once from the environment.

Values come from the process environment and, when the app runs locally, from the
``Values`` of ``local.settings.json`` (the environment wins, as under Core Tools).
Each setting is declared once, as a field of :class:`Settings`: its type, environment name, default
and meaning (and its parser, where the type's own does not do). ``SPECS`` is read off that declaration
so that docs/configuration.md, the local host (``%NAME%`` binding expressions) and validation
(``shared.settings_checks``) share one table.
Tests swap the object with :func:`use_settings` instead of patching ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from shared import settings_checks as checks
from shared.settings_checks import STORAGE, SettingsError
from shared.settings_checks import schedule_error as schedule_error  # re-exported: callers read it from here

PROJECT_ROOT = Path(__file__).resolve().parent.parent

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


def running_in_azure(environ: Mapping[str, str] | None = None) -> str | None:
    """The platform variable that says the app runs in Azure (None locally)."""
    env = os.environ if environ is None else environ
    return next((name for name in AZURE_HOST_MARKERS if env.get(name)), None)


@dataclasses.dataclass(frozen=True)
class Spec:
    """One setting as the docs, the local host and the loader read it (``SPECS``)."""

    env: str
    default: str | None  # None: no default (shown as required)
    parse: Callable[[str, str], Any]
    doc: str
    shown: str | None = None  # the default as docs/configuration.md shows it, where the value itself says little
    type: str = "str"  # the field's annotation

    def shown_default(self) -> str:
        if self.shown is not None:
            return self.shown
        return "(empty)" if self.default == "" else "(required)" if self.default is None else f"`{self.default}`"


# The parser of a field whose declaration names none, by the field's annotation.
PARSERS: dict[str, Callable[[str, str], Any]] = {
    "str": checks.parse_str, "int": checks.parse_int, "float": checks.parse_float, "bool": checks.parse_bool,
    "float | None": checks.parse_optional_float, "dict[str, Any]": checks.parse_json_object,
}


def setting(env: str, default: str | None, doc: str, *, parse: Callable[[str, str], Any] | None = None,
            shown: str | None = None) -> Any:
    """Declare a field of :class:`Settings`: the variable it is read from, its default text, what it does,
    its parser (default: the one of the field's type) and how the docs show its default."""
    return dataclasses.field(metadata={"setting": (env, default, doc, parse, shown)})


def specs_of(cls: type) -> dict[str, Spec]:
    """field name -> :class:`Spec`, in declaration order, read off the fields :func:`setting` declared."""
    specs = {}
    for f in dataclasses.fields(cls):
        env, default, doc, parse, shown = f.metadata["setting"]
        kind = str(f.type)
        if parse is None and kind not in PARSERS:
            raise TypeError(f"setting {f.name}: no parser for type {kind!r} (name one with parse=)")
        specs[f.name] = Spec(env, default, parse or PARSERS[kind], doc, shown, kind)
    return specs


@dataclasses.dataclass(frozen=True)
class Settings:
    # Order is the order of docs/configuration.md (generated: python -m scripts.settings_table).
    # --- app and storage
    ml_backend: str = setting("ML_BACKEND", "local", "Which ML backend the app drives: `local` (embedded workspace) or `azureml`.")
    storage_connection: str = setting("AzureWebJobsStorage", LOCAL_DEV_STORAGE, "Storage connection string, Azurite by default locally. In Azure do not set it at all (not even empty: the blob trigger's SDK binding then fails with `Invalid URL: https://`); there it has no default and the identity-based settings below are used.", shown='`Azurite on 127.0.0.1:10000-10002` (none in Azure)')
    storage_account_name: str = setting("AzureWebJobsStorage__accountName", "", "Identity-based storage: account name (stands for the three service URIs below when they are not set).")
    storage_blob_service_uri: str = setting("AzureWebJobsStorage__blobServiceUri", "", "Identity-based storage: blob endpoint, e.g. `https://<account>.blob.core.windows.net` (read by the blob binding extension and the app).")
    storage_queue_service_uri: str = setting("AzureWebJobsStorage__queueServiceUri", "", "Identity-based storage: queue endpoint (the Functions host's own storage).")
    storage_table_service_uri: str = setting("AzureWebJobsStorage__tableServiceUri", "", "Identity-based storage: table endpoint (the ledger).")
    storage_credential: str = setting("AzureWebJobsStorage__credential", "", "Identity-based storage: `managedidentity` to connect with a managed identity (with `AzureWebJobsStorage__clientId` for a user-assigned one).")
    storage_client_id: str = setting("AzureWebJobsStorage__clientId", "", "Identity-based storage: client id of the user-assigned identity (empty: `AZURE_CLIENT_ID`).")
    chat_data_container: str = setting("CHAT_DATA_CONTAINER", "chat-data", "Container watched for raw chat data uploads (never modified).")
    prepared_container: str = setting("PREPARED_CONTAINER", "prepared", "Container for prepared datasets (`datasets/<id>/train.jsonl`, `test.jsonl`, `report.json`).")
    ledger_table: str = setting("LEDGER_TABLE", "ledger", "Table Storage table holding the ledger of datasets, jobs, models and endpoints.")
    function_key: str = setting("FUNCTION_KEY", "", "Local host only: when set, FUNCTION-level HTTP routes require it (`x-functions-key` header or `code=` query).")
    # --- preparation
    test_fraction: float = setting("TEST_FRACTION", "0.1", "Share of conversations put in the test split (deterministic by conversation hash).")
    min_valid_examples: int = setting("MIN_VALID_EXAMPLES", "10", "A dataset with fewer valid conversations is rejected and never submitted.")
    max_invalid_share: float = setting("MAX_INVALID_SHARE", "0.2", "A dataset whose share of invalid lines is above this is rejected.")
    report_error_cap: int = setting("REPORT_ERROR_CAP", "200", "At most this many line errors are listed in report.json (the rest are counted).")
    max_row_bytes: int = setting("MAX_ROW_BYTES", str(8 << 20), "Largest decoded size of one line or parquet row (bytes); a longer one is reported (`line_too_long`) and skipped without being held in memory.")
    max_decoded_bytes: int = setting("MAX_DECODED_BYTES", str(2 << 30), "Largest decoded size of one upload (bytes, after gzip / parquet decoding); reading stops there and the file is rejected (`too_large`).")
    max_expansion_ratio: float = setting("MAX_EXPANSION_RATIO", "100", "Largest decoded / raw size ratio of an upload (gzip, parquet compression and dictionaries; chat text compresses 3-10x): past it, once more than 64 MiB are decoded, the file is rejected as a decompression bomb (`too_large`).")
    max_parquet_column_chunk_bytes: int = setting("MAX_PARQUET_COLUMN_CHUNK_BYTES", str(128 << 20), "Parquet: largest decoded size of one column of one row group (metadata, checked before decoding; a page is never bigger); write larger files with smaller row groups (pyarrow `row_group_size`).")
    data_policy: dict[str, str] = setting("DATA_POLICY", "report", "Data quality gate (personal data, secrets, special tokens, near-duplicates, leakage): `report` (report only), `redact` (personal data and secrets masked in the prepared copy, special tokens defused; the raw upload is never changed), or `reject` (any finding rejects the upload); or a JSON object collection -> one of those (`*` for the rest).", parse=checks.parse_data_policy)
    near_duplicate_threshold: float = setting("NEAR_DUPLICATE_THRESHOLD", "0.8", "Data quality gate: estimated Jaccard similarity (MinHash LSH, word 3-grams) from which two conversations count as near-duplicates (within an upload, and against the collection's held-out evaluation set).")
    # --- fine-tuning (both backends)
    experiment_name: str = setting("EXPERIMENT_NAME", "chat-finetune-autopilot", "Experiment the fine-tuning jobs are submitted under.")
    finetuned_model_name: str = setting("FINETUNED_MODEL_NAME", "", "Registered name of the fine-tuned model (default: `<base model>-chat-ft`).")
    finetune_params: dict[str, Any] = setting("FINETUNE_PARAMS", "", "JSON object of fine-tune parameter overrides (component input names, e.g. `{\"num_train_epochs\": 1}`).")
    # --- training: collections, corpus, coalescing, spend ceiling (shared.training)
    training_mode: str = setting("TRAINING_MODE", "corpus", "`corpus`: a job trains on every accepted, not retired dataset of the upload's collection (the blob's first folder); `upload`: one job per uploaded file, on that file alone.")
    coalesce_s: int = setting("COALESCE_SECONDS", "60", "Corpus mode: a collection's job is submitted this long after its first pending upload, so a burst of uploads becomes one job (0: at once). Submitted by the upload's own delivery when due at once, else at the due time by a message on queue `collection-submissions` (`COLLECTION_SUBMISSIONS`), `reconcile` being the safety net.")
    collection_submissions: bool = setting("COLLECTION_SUBMISSIONS", "true", "Corpus mode: when a collection becomes pending, schedule its submission for its due time (a message on queue `collection-submissions`, visible at the due time) instead of leaving it to the next `reconcile` (false: `reconcile` only, the earlier behaviour).")
    collection_model_names: dict[str, Any] = setting("COLLECTION_MODEL_NAMES", "", "Corpus mode: JSON object collection -> fine-tuned model name (default: `default` -> `FINETUNED_MODEL_NAME`'s name, any other collection -> that name + `-<collection>`).")
    max_running_jobs: int = setting("MAX_RUNNING_JOBS", "2", "Corpus mode: at most this many fine-tuning jobs run at once across collections (0: no limit); a due submission beyond it waits, pending.")
    finetune_budget_usd: float | None = setting("FINETUNE_BUDGET_USD", "", "Corpus mode: monthly (UTC calendar month) fine-tuning budget in USD, counted from the jobs' real run times x `INSTANCE_HOURLY_PRICES`; once spent, submissions wait, pending (empty: no budget).")
    eventgrid_webhook_url: str = setting("EVENTGRID_WEBHOOK_URL", "", "Local backend: where the workspace posts its job events (the app's Event Grid webhook); empty: the `on_job_event` webhook of the local host on `LOCAL_HOST_PORT`.", shown='(empty: derived)')
    local_host_port: int = setting("LOCAL_HOST_PORT", "7071", "Local stack: port of the local Functions host (`make up`, `python -m devhost.host`); the job-event webhook follows it unless `EVENTGRID_WEBHOOK_URL` is set.")
    # --- local workspace
    local_workspace_dir: str = setting("LOCAL_WORKSPACE_DIR", str(PROJECT_ROOT / ".local" / "workspace"), "Folder of the local workspace (jobs, MLflow database, models, endpoint records).", shown='`./.local/workspace`')
    local_base_model: str = setting("LOCAL_BASE_MODEL", "smollm2", "Local base model: `smollm2` (SmolLM2-135M-Instruct) or `tiny-random` (fast tests).")
    local_workspace_id: str = setting("LOCAL_WORKSPACE_ID", LOCAL_WORKSPACE_ID, "Resource id the local workspace uses as its Event Grid topic.", shown='`a fixed local resource id`')
    local_model_cache: str = setting("LOCAL_MODEL_CACHE", str(PROJECT_ROOT / ".local" / "models"), "Local workspace: folder caching the base models as plain transformers folders (shared by workspaces, built once).", shown='`./.local/models`')
    local_max_parallel_jobs: int = setting("LOCAL_MAX_PARALLEL_JOBS", "", "Local workspace: at most this many fine-tunes train at once; the others wait (`queued`) and start in submission order (empty: half the CPU cores, at least 1).", parse=checks.parse_parallel_jobs, shown='(half the CPU cores, at least 1)')
    # --- Azure ML
    azure_subscription_id: str = setting("AZURE_SUBSCRIPTION_ID", "", "Azure ML backend: subscription of the workspace (or use `AZURE_ML_CONFIG`).")
    azure_resource_group: str = setting("AZURE_RESOURCE_GROUP", "", "Azure ML backend: resource group of the workspace.")
    azure_ml_workspace: str = setting("AZURE_ML_WORKSPACE", "", "Azure ML backend: workspace name.")
    azure_ml_config: str = setting("AZURE_ML_CONFIG", "", "Azure ML backend: path of a workspace `config.json` instead of the three settings above.")
    azure_client_id: str = setting("AZURE_CLIENT_ID", "", "Client id of the user-assigned managed identity (empty: DefaultAzureCredential's chain).")
    azure_ml_registry: str = setting("AZURE_ML_REGISTRY", "azureml", "Registry holding the foundation model and the `chat_completion_pipeline` component.")
    foundation_model_name: str = setting("FOUNDATION_MODEL_NAME", "Phi-4", "Foundation model to fine-tune (registry model name; the cookbook's Phi-3-mini-4k-instruct is retired).")
    foundation_model_version: str = setting("FOUNDATION_MODEL_VERSION", "", "Pinned foundation model version (empty: label latest).")
    pipeline_component_version: str = setting("PIPELINE_COMPONENT_VERSION", "", "Pinned `chat_completion_pipeline` version (empty: label latest).")
    azure_ml_datastore: str = setting("AZURE_ML_DATASTORE", "autopilot_prepared", "Workspace datastore on the prepared-data container (the deployment creates `autopilot_prepared`; checked before the first submission); train/test are passed as `azureml://datastores/<it>/paths/...`.")
    finetune_compute: str = setting("FINETUNE_COMPUTE", "", "Compute cluster for fine-tuning (empty: serverless with `FINETUNE_INSTANCE_TYPE`).")
    finetune_instance_type: str = setting("FINETUNE_INSTANCE_TYPE", "Standard_NC24ads_A100_v4", "Serverless fine-tuning instance type (checked against the model's fine-tune allow list and retired sizes).")
    inference_instance_type: str = setting("INFERENCE_INSTANCE_TYPE", "Standard_NC24ads_A100_v4", "Online deployment instance type (checked against the model's inference allow list and retired sizes before fine-tuning starts).")
    inference_instance_count: int = setting("INFERENCE_INSTANCE_COUNT", "1", "Online deployment instance count.")
    endpoint_auth_mode: str = setting("ENDPOINT_AUTH_MODE", "key", "Online endpoint auth mode: `key`, `aml_token` or `aad_token`.")
    # --- evaluation: held-out set, candidate vs champion, promotion rule (shared.evaluation)
    eval_fraction: float = setting("EVAL_FRACTION", "0.1", "Corpus mode: conversations whose digest is in the top this share of the digest space are eval candidates, held out of training (0: no carved eval set; `TEST_FRACTION` + this must stay below 1).")
    eval_max_conversations: int = setting("EVAL_MAX_CONVERSATIONS", "50", "Corpus mode: at most this many eval candidates (the highest digests) form a collection's held-out eval set; the others are trained on (0: no carved eval set). Golden files under `<collection>/eval/` come on top.")
    eval_primary_metric: str = setting("EVAL_PRIMARY_METRIC", "rouge_l", "The metric the promotion rule compares: `f1`, `rouge_l`, `bleu`, `chrf` (0..1; azure-ai-evaluation F1/ROUGE-L, sacrebleu BLEU/chrF) or, with a judge, `judge_similarity` / `judge_relevance` (1..5).")
    eval_margin: float = setting("EVAL_MARGIN", "0.02", "A candidate is promoted only when its primary metric is not below the champion's by more than this (and it keeps every rule).")
    eval_floors: dict[str, Any] = setting("EVAL_FLOORS", '{"rouge_l": 0.05}', "JSON object metric -> minimum: the first version of a collection (no champion) is promoted only when it meets every floor (and keeps every rule).")
    eval_rules: dict[str, Any] = setting("EVAL_RULES", "", "JSON object collection (or `*`) -> list of rules every candidate answer must keep: `{\"must\": regex}`, `{\"must_not\": regex}`, `{\"json\": true}`, `{\"min_chars\": n, \"max_chars\": m}`, each with optional `name` and `min_pass_rate` (default 1).")
    eval_parallelism: int = setting("EVAL_PARALLELISM", "2", "At most this many eval answers are requested at once (candidate and champion together).")
    eval_time_budget_s: float = setting("EVAL_TIME_BUDGET_S", "600", "One evaluation call stops asking for answers after this many seconds; the answers so far are stored and the next call (follow-up or `reconcile`) goes on from them.")
    eval_max_new_tokens: int = setting("EVAL_MAX_NEW_TOKENS", "64", "max_tokens of each eval answer (the rollout's answer callables pass it to the deployments).")
    eval_judge_endpoint: str = setting("EVAL_JUDGE_ENDPOINT", "", "Optional judge model: base URL of an OpenAI-compatible API (e.g. `https://host/v1`); with `EVAL_JUDGE_MODEL` it adds `judge_similarity` and `judge_relevance` (azure-ai-evaluation's SimilarityEvaluator / RelevanceEvaluator).")
    eval_judge_model: str = setting("EVAL_JUDGE_MODEL", "", "Optional judge model: the model (deployment) name the judge endpoint serves.")
    eval_judge_api_key: str = setting("EVAL_JUDGE_API_KEY", "", "Optional judge model: API key of the judge endpoint (empty: none sent).")
    # --- job events and deployment
    quality_gate: bool = setting("QUALITY_GATE", "false", "Deploy only when the job's test loss beat the base model's (where the backend reports it).")
    delete_replaced_endpoints: bool = setting("DELETE_REPLACED_ENDPOINTS", "false", "Delete the previous endpoint at once when a newer model becomes active (else the janitor does it when idle).")
    reconcile_schedule: str = setting("RECONCILE_SCHEDULE", "0 */5 * * * *", "NCRONTAB schedule of the `reconcile` timer.")
    endpoint_followups: bool = setting("ENDPOINT_FOLLOWUPS", "true", "Check a deployment or deletion in flight within seconds (queue `endpoint-followups`: every 2 s for half a minute, then backed off to every 30 s) instead of only at the next `reconcile`.")
    # --- rollout of a new version beside the serving one (shared.rollout)
    rollout_candidates: bool = setting("ROLLOUT_CANDIDATES", "true", "Deploy a new version of a model as a second deployment of the endpoint that serves it (0% traffic), judge it against the serving one, canary it, and roll it back by itself on regression; a collection's first version is judged against `EVAL_FLOORS` before it takes traffic. false: every version gets its own endpoint and takes over at once, unjudged (the earlier behaviour).")
    canary_percent: int = setting("CANARY_PERCENT", "10", "Share of live traffic (1-50%) a promoted candidate takes during its canary.")
    canary_minutes: float = setting("CANARY_MINUTES", "10", "How long the canary lasts before the candidate takes 100% (if it did not regress).")
    canary_requests: int = setting("CANARY_REQUESTS", "0", "End the canary earlier, once the candidate has served this many live requests (0: time only).")
    canary_min_requests: int = setting("CANARY_MIN_REQUESTS", "5", "Requests the candidate must have served before its error rate and latency are compared (fewer: no verdict yet, unless its deployment failed).")
    canary_max_error_rate_increase: float = setting("CANARY_MAX_ERROR_RATE_INCREASE", "0.05", "Regression: the candidate's error rate (5xx or no answer) exceeds the champion's by more than this.")
    canary_max_p95_ratio: float = setting("CANARY_MAX_P95_RATIO", "2.0", "Regression: the candidate's p95 latency exceeds the champion's times this (and by `CANARY_MIN_P95_INCREASE_MS`, each with `CANARY_LATENCY_MIN_REQUESTS` requests).")
    canary_min_p95_increase_ms: float = setting("CANARY_MIN_P95_INCREASE_MS", "500", "Latency regression also needs the candidate's p95 above the champion's by at least this many milliseconds: a ratio alone fires on noise when answers are fast (0: the ratio alone).")
    canary_latency_min_requests: int = setting("CANARY_LATENCY_MIN_REQUESTS", "20", "p95 latencies are compared only once each deployment served this many requests (a p95 of a handful of requests is their slowest one); errors are judged from `CANARY_MIN_REQUESTS`.")
    submit_claim_lease_s: int = setting("SUBMIT_CLAIM_LEASE_SECONDS", "300", "A delivery's claim on submitting a dataset is honoured this long; after it, a crashed delivery's submission is finished by the next delivery or `reconcile`.")
    # --- scoring
    scoring_max_request_bytes: int = setting("SCORING_MAX_REQUEST_BYTES", "262144", "Largest scoring request body accepted.")
    scoring_max_new_tokens: int = setting("SCORING_MAX_NEW_TOKENS", "1024", "Upper bound for max_new_tokens / max_tokens.")
    scoring_redeploy_on_demand: bool = setting("SCORING_REDEPLOY_ON_DEMAND", "true", "When a model has no live endpoint, a scoring call starts redeploying its last version.")
    scoring_retry_after_s: int = setting("SCORING_RETRY_AFTER_S", "60", "Retry-After (seconds) sent with 503 while an endpoint is (re)deploying, until the app has deployment times to estimate it from.")
    activity_flush_s: int = setting("ACTIVITY_FLUSH_S", "30", "Scoring records an endpoint's last activity at most once per this many seconds per worker.")
    scoring_route_max_stale_s: int = setting("SCORING_ROUTE_MAX_STALE_S", "300", "While the ledger is unreachable, scoring keeps using a known route this many seconds after it was last read from the ledger.")
    max_live_endpoints: int = setting("MAX_LIVE_ENDPOINTS", "4", "At most this many endpoints and deployments live (provisioning or serving, candidates beside a champion included); a deployment that would pass it is not started and its model's record says why (`shared.endpoints.capacity`).")
    scoring_max_streams: int = setting("SCORING_MAX_STREAMS", "8", "Streamed answers (`stream: true`) one worker relays at once per endpoint; past it a client gets 429 with Retry-After.", parse=checks.parse_at_least_one)
    scoring_stream_idle_s: int = setting("SCORING_STREAM_IDLE_S", "60", "A stream ends (and its upstream is closed) when the endpoint sends nothing, or the client reads nothing, for this many seconds.", parse=checks.parse_at_least_one)
    # --- endpoint healing
    endpoint_heal_attempts: int = setting("ENDPOINT_HEAL_ATTEMPTS", "3", "Redeploys the health loop tries for an unhealthy or failed endpoint before it records it failed for good.")
    endpoint_heal_backoff_s: int = setting("ENDPOINT_HEAL_BACKOFF_S", "30", "Wait before the second heal redeploy; doubled for each further one.")
    # --- idle janitor
    janitor_schedule: str = setting("JANITOR_SCHEDULE", "0 */10 * * * *", "NCRONTAB schedule of the `delete_idle_endpoints` timer.")
    idle_endpoint_minutes: float = setting("IDLE_ENDPOINT_MINUTES", "60", "An endpoint with no activity for longer than this is deleted.")
    idle_grace_minutes: float = setting("IDLE_GRACE_MINUTES", "15", "Never delete an endpoint within this many minutes after it became active.")
    janitor_keep_latest: bool = setting("JANITOR_KEEP_LATEST", "false", "Never delete a model's active endpoint.")
    janitor_dry_run: bool = setting("JANITOR_DRY_RUN", "false", "Report what would be deleted, delete nothing.")
    instance_hourly_prices: dict[str, Any] = setting("INSTANCE_HOURLY_PRICES", '{"Standard_NC24ads_A100_v4": 3.67, "local": 0.0}', "JSON object: USD per instance-hour by instance type, for the janitor's savings estimate (the retired NCv3 sizes are not priced).", shown='`NC24ads_A100_v4 $3.67, local $0`')
    training_tokens_per_second: dict[str, Any] = setting("TRAINING_TOKENS_PER_SECOND", '{"Standard_NC24ads_A100_v4": 2500, "local": 400}', "JSON object: training throughput (tokens per second per instance) by instance type, for the report's cost forecast (tokens x epochs / throughput x `INSTANCE_HOURLY_PRICES`) that the spend guard adds to what is spent.")
    # --- observability
    appinsights_connection_string: str = setting("APPLICATIONINSIGHTS_CONNECTION_STRING", "", "Application Insights connection string: when set, the functions export OpenTelemetry spans (one trace per upload); empty: nothing is sent anywhere.")
    appinsights_authentication_string: str = setting("APPLICATIONINSIGHTS_AUTHENTICATION_STRING", "", "`Authorization=AAD;ClientId=<client id>`: export with that managed identity (Application Insights with local auth off).")

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


# field name -> spec, read off the declaration above.
SPECS: dict[str, Spec] = specs_of(Settings)


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
    checks.validate_storage(settings, present_empty=STORAGE in env and not env[STORAGE].strip(), in_azure=in_azure)
    checks.validate(settings)
    return settings


def local_webhook_url(port: int) -> str:
    """The local host's Event Grid webhook of ``on_job_event`` (where local job events go)."""
    return f"http://127.0.0.1:{port}/runtime/webhooks/eventgrid?functionName=on_job_event"


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
