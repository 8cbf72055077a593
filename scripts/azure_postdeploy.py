"""Post-deploy step of `azd up`: create the Event Grid subscriptions once the code exists.

The blob trigger's webhook needs the Function App's `blobs_extension` system key (and the Event
Grid trigger's the `eventgrid_extension` key). Those keys exist only after the code is deployed
and the host has indexed the functions, so the subscriptions cannot be part of the Bicep
deployment. azd runs this module as its `postdeploy` hook (see azure.yaml) with the template's
outputs in the environment. It:

1. waits, with a bounded number of attempts, until the app lists the functions the subscriptions
   point at and both system keys exist (clear error naming what is missing when they never do);
2. creates or updates, idempotently, three subscriptions:
   - storage system topic: ``Microsoft.Storage.BlobCreated`` whose subject begins with exactly
     ``/blobServices/default/containers/<chat-data>/blobs/`` and whose ``data.api`` is one of the
     writes that complete a blob -> the Event Grid-sourced blob trigger ``prepare_chat_data``;
   - workspace system topic: ``RunCompleted``, unfiltered -> ``on_job_event``;
   - workspace system topic: ``RunStatusChanged`` with ``data.runStatus`` in Failed/Canceled ->
     ``on_job_event``. (``RunCompleted`` carries no ``runStatus``: one subscription for both
     types filtered on it would drop every completion.)

A subscription that already matches (same destination URL, key included, same filters, schema
and retry policy) is left alone: a second run makes no write.

Run by hand: ``python -m scripts.azure_postdeploy`` with the variables in ``REQUIRED_ENV`` set
(``azd env get-values`` prints them).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

log = logging.getLogger("azure_postdeploy")

# The functions the subscriptions deliver to (function_app.app; tests/test_infra_crosscheck.py
# checks these names and their trigger types against the app's index).
BLOB_FUNCTION = "prepare_chat_data"
JOB_EVENT_FUNCTION = "on_job_event"
# System keys the Functions host creates for the extensions' webhooks.
BLOBS_EXTENSION_KEY = "blobs_extension"
EVENTGRID_EXTENSION_KEY = "eventgrid_extension"

# BlobCreated fires for these writes once the block blob is completely committed (Event Grid's
# Blob Storage event schema); FlushWithClose is the same for hierarchical-namespace accounts.
# CreateFile (an empty file about to be written) is left out.
BLOB_COMPLETING_APIS = ("PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose")
RUN_FAILED_STATUSES = ("Failed", "Canceled")

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
RUN_COMPLETED = "Microsoft.MachineLearningServices.RunCompleted"
RUN_STATUS_CHANGED = "Microsoft.MachineLearningServices.RunStatusChanged"

DELIVERY_SCHEMA = "EventGridSchema"
MAX_DELIVERY_ATTEMPTS = 30
EVENT_TTL_MINUTES = 1440

# Outputs of infra/main.bicep that azd puts in the hook's environment (AZURE_SUBSCRIPTION_ID is
# azd's own). tests/test_infra_crosscheck.py checks each is an output of the template.
REQUIRED_ENV = (
    "AZURE_SUBSCRIPTION_ID",
    "AZURE_RESOURCE_GROUP",
    "AZURE_FUNCTION_APP_NAME",
    "STORAGE_SYSTEM_TOPIC_NAME",
    "WORKSPACE_SYSTEM_TOPIC_NAME",
    "CHAT_DATA_CONTAINER",
)
AZD_PROVIDED_ENV = ("AZURE_SUBSCRIPTION_ID",)

DEFAULT_ATTEMPTS = 30
DEFAULT_DELAY_S = 10.0


class PostDeployError(RuntimeError):
    """The step cannot finish; the message says what is missing and where to look."""


@dataclasses.dataclass(frozen=True)
class DeployTarget:
    subscription_id: str
    resource_group: str
    function_app: str
    storage_topic: str
    workspace_topic: str
    chat_data_container: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> DeployTarget:
        missing = [name for name in REQUIRED_ENV if not environ.get(name)]
        if missing:
            raise PostDeployError(
                f"missing environment variable(s) {', '.join(missing)}: run this step through `azd up` / `azd deploy` "
                "(azd passes the template's outputs), or export them from `azd env get-values`"
            )
        return cls(
            subscription_id=environ["AZURE_SUBSCRIPTION_ID"],
            resource_group=environ["AZURE_RESOURCE_GROUP"],
            function_app=environ["AZURE_FUNCTION_APP_NAME"],
            storage_topic=environ["STORAGE_SYSTEM_TOPIC_NAME"],
            workspace_topic=environ["WORKSPACE_SYSTEM_TOPIC_NAME"],
            chat_data_container=environ["CHAT_DATA_CONTAINER"],
        )


@dataclasses.dataclass(frozen=True)
class AdvancedFilter:
    operator: str  # e.g. StringIn
    key: str
    values: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class SubscriptionSpec:
    """One Event Grid subscription as this step wants it."""

    topic: str
    name: str
    function: str
    webhook: str  # "blobs" (blob trigger) or "eventgrid" (Event Grid trigger)
    system_key: str
    included_event_types: tuple[str, ...]
    subject_begins_with: str = ""
    advanced_filters: tuple[AdvancedFilter, ...] = ()

    def endpoint_url(self, host: str, key: str) -> str:
        return webhook_base_url(host, self.webhook) + "?" + webhook_query(self.webhook, self.function, key)


def webhook_base_url(host: str, webhook: str) -> str:
    return f"https://{host}/runtime/webhooks/{webhook}"


def webhook_query(webhook: str, function: str, key: str) -> str:
    # The blob extension addresses functions by their host id, the Event Grid extension by name.
    function_name = f"Host.Functions.{function}" if webhook == "blobs" else function
    return f"functionName={function_name}&code={key}"


def blob_subject_prefix(container: str) -> str:
    """Subject prefix of every blob in ``container`` (the trailing slash keeps ``chat-data2`` out)."""
    return f"/blobServices/default/containers/{container}/blobs/"


def subscription_specs(target: DeployTarget) -> list[SubscriptionSpec]:
    return [
        SubscriptionSpec(
            topic=target.storage_topic,
            name="chat-data-blob-created",
            function=BLOB_FUNCTION,
            webhook="blobs",
            system_key=BLOBS_EXTENSION_KEY,
            included_event_types=(BLOB_CREATED,),
            subject_begins_with=blob_subject_prefix(target.chat_data_container),
            advanced_filters=(AdvancedFilter("StringIn", "data.api", BLOB_COMPLETING_APIS),),
        ),
        SubscriptionSpec(
            topic=target.workspace_topic,
            name="job-run-completed",
            function=JOB_EVENT_FUNCTION,
            webhook="eventgrid",
            system_key=EVENTGRID_EXTENSION_KEY,
            included_event_types=(RUN_COMPLETED,),
        ),
        SubscriptionSpec(
            topic=target.workspace_topic,
            name="job-run-failed",
            function=JOB_EVENT_FUNCTION,
            webhook="eventgrid",
            system_key=EVENTGRID_EXTENSION_KEY,
            included_event_types=(RUN_STATUS_CHANGED,),
            advanced_filters=(AdvancedFilter("StringIn", "data.runStatus", RUN_FAILED_STATUSES),),
        ),
    ]


# --------------------------------------------------------------------------- waiting for the app


@dataclasses.dataclass(frozen=True)
class AppReady:
    host: str
    system_keys: dict[str, str]


def wait_until_ready(
    web: Any,
    target: DeployTarget,
    specs: Sequence[SubscriptionSpec],
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    delay_s: float = DEFAULT_DELAY_S,
    sleep: Callable[[float], None] = time.sleep,
) -> AppReady:
    """Poll until the app lists every target function and has every system key; bounded."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    try:
        site = web.web_apps.get(target.resource_group, target.function_app)
    except ClientAuthenticationError as exc:
        raise PostDeployError(f"not authorized to read Function App {target.function_app!r} ({_reason(exc)}): run `azd auth login`") from exc
    except HttpResponseError as exc:
        raise PostDeployError(f"cannot read Function App {target.function_app!r} in {target.resource_group}: {_reason(exc)}") from exc
    host = site.default_host_name
    if not host:
        raise PostDeployError(f"Function App {target.function_app!r} has no default host name (is it running?)")
    functions = sorted({s.function for s in specs})
    keys = sorted({s.system_key for s in specs})
    missing_functions: list[str] = functions
    missing_keys: list[str] = keys
    last_error = ""
    for attempt in range(1, attempts + 1):
        system_keys: dict[str, str] = {}
        try:
            listed = {_function_name(f) for f in web.web_apps.list_functions(target.resource_group, target.function_app)}
            missing_functions = [f for f in functions if f not in listed]
            if not missing_functions:
                host_keys = web.web_apps.list_host_keys(target.resource_group, target.function_app)
                system_keys = dict(host_keys.system_keys or {})
            last_error = ""
        except ClientAuthenticationError as exc:
            raise PostDeployError(f"not authorized on Function App {target.function_app!r} ({_reason(exc)}): run `azd auth login`") from exc
        except HttpResponseError as exc:  # the host is still starting: not ready yet
            last_error = _reason(exc)
        missing_keys = [k for k in keys if not system_keys.get(k)]
        if not missing_functions and not missing_keys:
            log.info("app %s ready after %d attempt(s): functions %s, keys %s", target.function_app, attempt, functions, keys)
            return AppReady(host=host, system_keys=system_keys)
        log.info(
            "attempt %d/%d: waiting for %s",
            attempt,
            attempts,
            ", ".join([f"function {f}" for f in missing_functions] + [f"system key {k}" for k in missing_keys]),
        )
        if attempt < attempts:
            sleep(delay_s)
    what = [f"function(s) {', '.join(missing_functions)} not indexed"] if missing_functions else []
    what += [f"system key(s) {', '.join(missing_keys)} missing"] if missing_keys else []
    what += [f"last error: {last_error}"] if last_error else []
    raise PostDeployError(
        f"Function App {target.function_app!r} not ready after {attempts} attempts ({(attempts - 1) * delay_s:.0f} s): "
        f"{'; '.join(what)}. Check that the code deployed (`azd deploy`) and the host started "
        "(Application Insights traces, or `az functionapp function list`), then run `azd hooks run postdeploy`."
    )


def _reason(exc: Exception) -> str:
    error = getattr(exc, "error", None)
    if error is not None and getattr(error, "code", None):
        return f"{error.code}: {error.message}"
    return str(getattr(exc, "message", None) or exc).splitlines()[0]


def _function_name(envelope: Any) -> str:
    # ARM names functions "<site>/<function>".
    return str(envelope.name).rsplit("/", 1)[-1]


# --------------------------------------------------------------------------- subscriptions


def to_model(spec: SubscriptionSpec, endpoint_url: str) -> Any:
    from azure.mgmt.eventgrid import models

    advanced = [models.StringInAdvancedFilter(key=f.key, values=list(f.values)) for f in spec.advanced_filters if f.operator == "StringIn"]
    if len(advanced) != len(spec.advanced_filters):
        raise PostDeployError(f"{spec.name}: only StringIn advanced filters are supported here")
    return models.EventSubscription(
        destination=models.WebHookEventSubscriptionDestination(endpoint_url=endpoint_url),
        filter=models.EventSubscriptionFilter(
            included_event_types=list(spec.included_event_types),
            subject_begins_with=spec.subject_begins_with,
            subject_ends_with="",
            is_subject_case_sensitive=False,
            advanced_filters=advanced or None,
        ),
        event_delivery_schema=DELIVERY_SCHEMA,
        retry_policy=models.RetryPolicy(max_delivery_attempts=MAX_DELIVERY_ATTEMPTS, event_time_to_live_in_minutes=EVENT_TTL_MINUTES),
    )


def differences(existing: Any, spec: SubscriptionSpec, host: str) -> list[str]:
    """What differs between an existing subscription (as GET returns it) and the spec (empty: same)."""
    diffs = []
    dest = existing.destination
    if getattr(dest, "endpoint_type", None) != "WebHook":
        diffs.append(f"destination type {getattr(dest, 'endpoint_type', None)!r}")
    elif (dest.endpoint_base_url or "") != webhook_base_url(host, spec.webhook):
        diffs.append(f"endpoint {dest.endpoint_base_url!r}")
    f = existing.filter
    if f is None:
        return diffs + ["no filter"]
    if sorted(f.included_event_types or []) != sorted(spec.included_event_types):
        diffs.append(f"event types {f.included_event_types}")
    if (f.subject_begins_with or "") != spec.subject_begins_with:
        diffs.append(f"subject prefix {f.subject_begins_with!r}")
    if f.subject_ends_with:
        diffs.append(f"subject suffix {f.subject_ends_with!r}")
    if f.is_subject_case_sensitive:
        diffs.append("case-sensitive subject")
    have = {(a.operator_type, a.key, tuple(sorted(getattr(a, "values", None) or []))) for a in (f.advanced_filters or [])}
    want = {(a.operator, a.key, tuple(sorted(a.values))) for a in spec.advanced_filters}
    if have != want:
        diffs.append(f"advanced filters {sorted(have)}")
    if (existing.event_delivery_schema or DELIVERY_SCHEMA) != DELIVERY_SCHEMA:
        diffs.append(f"schema {existing.event_delivery_schema!r}")
    r = existing.retry_policy
    if r is not None and (r.max_delivery_attempts, r.event_time_to_live_in_minutes) != (MAX_DELIVERY_ATTEMPTS, EVENT_TTL_MINUTES):
        diffs.append(f"retry policy {r.max_delivery_attempts}/{r.event_time_to_live_in_minutes}")
    return diffs


@dataclasses.dataclass
class Outcome:
    created: list[str] = dataclasses.field(default_factory=list)
    updated: list[str] = dataclasses.field(default_factory=list)
    unchanged: list[str] = dataclasses.field(default_factory=list)


def ensure_subscriptions(eventgrid: Any, target: DeployTarget, specs: Sequence[SubscriptionSpec], ready: AppReady) -> Outcome:
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    ops = eventgrid.system_topic_event_subscriptions
    outcome = Outcome()
    for spec in specs:
        url = spec.endpoint_url(ready.host, ready.system_keys[spec.system_key])
        label = f"{spec.topic}/{spec.name}"
        try:
            existing = ops.get(target.resource_group, spec.topic, spec.name)
        except ResourceNotFoundError:
            existing = None
        if existing is not None:
            diffs = differences(existing, spec, ready.host)
            if not diffs:
                # GET never returns the query string (the key): compare the full URL.
                full = ops.get_full_url(target.resource_group, spec.topic, spec.name).endpoint_url
                if full == url:
                    log.info("%s: unchanged", label)
                    outcome.unchanged.append(label)
                    continue
                diffs = ["endpoint query (function name or key)"]
            log.info("%s: updating (%s)", label, "; ".join(diffs))
        else:
            log.info("%s: creating -> %s", label, spec.function)
        try:
            ops.begin_create_or_update(target.resource_group, spec.topic, spec.name, to_model(spec, url)).result()
        except HttpResponseError as exc:
            # e.g. Event Grid's webhook validation handshake failed (the host not answering yet)
            raise PostDeployError(
                f"creating Event Grid subscription {label} -> {spec.function} failed: {_reason(exc)}. "
                "Once the app answers, run `azd hooks run postdeploy` again (it only writes what differs)."
            ) from exc
        (outcome.updated if existing is not None else outcome.created).append(label)
    return outcome


def run(
    target: DeployTarget,
    credential: Any,
    *,
    attempts: int = DEFAULT_ATTEMPTS,
    delay_s: float = DEFAULT_DELAY_S,
    sleep: Callable[[float], None] = time.sleep,
    client_kwargs: Mapping[str, Any] | None = None,
) -> Outcome:
    from azure.mgmt.eventgrid import EventGridManagementClient
    from azure.mgmt.web import WebSiteManagementClient

    kwargs = dict(client_kwargs or {})
    web = WebSiteManagementClient(credential, target.subscription_id, **kwargs)
    eventgrid = EventGridManagementClient(credential, target.subscription_id, **kwargs)
    specs = subscription_specs(target)
    ready = wait_until_ready(web, target, specs, attempts=attempts, delay_s=delay_s, sleep=sleep)
    return ensure_subscriptions(eventgrid, target, specs, ready)


def azd_credential() -> Any:
    """The ``azd`` user's credential first: the hook runs for ``azd up``, whose account may not be the
    az CLI's (``DefaultAzureCredential`` tries the az CLI before azd). The rest of the default chain
    (environment, managed identity, az CLI ...) follows, without azd a second time."""
    from azure.identity import AzureDeveloperCliCredential, ChainedTokenCredential, DefaultAzureCredential

    return ChainedTokenCredential(AzureDeveloperCliCredential(),
                                  DefaultAzureCredential(exclude_developer_cli_credential=True))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--attempts", type=int, default=DEFAULT_ATTEMPTS, help="readiness checks before giving up")
    parser.add_argument("--delay-s", type=float, default=DEFAULT_DELAY_S, help="seconds between readiness checks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="postdeploy: %(message)s")
    try:
        target = DeployTarget.from_env(os.environ if environ is None else environ)
        outcome = run(target, azd_credential(), attempts=args.attempts, delay_s=args.delay_s)
    except PostDeployError as exc:
        print(f"postdeploy: error: {exc}", file=sys.stderr)
        return 1
    print(
        f"postdeploy: Event Grid subscriptions: created {len(outcome.created)}, updated {len(outcome.updated)}, "
        f"unchanged {len(outcome.unchanged)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
