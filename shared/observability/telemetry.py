"""One trace per upload: OpenTelemetry spans from the functions, exported to Application Insights.

Nothing is exported unless ``APPLICATIONINSIGHTS_CONNECTION_STRING`` is set: then the first span
configures the Azure Monitor distro (``azure-monitor-opentelemetry``, imported only then, so
``import function_app`` stays light). With local authentication off on the Application Insights
resource, set ``APPLICATIONINSIGHTS_AUTHENTICATION_STRING=Authorization=AAD;ClientId=<identity
client id>``: the exporter then authenticates with that managed identity (the exporter reads
the variable from the environment; a value from ``local.settings.json`` is honoured here too).
Without it, every span is still written to the log with the same structured fields (``span``,
``dataset_id``, ``job``, ``model``, ``endpoint``, ``duration_ms``, ``outcome``).

How one upload becomes one operation (one trace id):

- ``prepare_chat_data`` opens the root span; its W3C ``traceparent`` is stored on the dataset's
  ledger record (field ``traceparent``, first delivery wins);
- ``on_job_event`` continues that trace: job -> its dataset -> ``traceparent``;
- ``reconcile`` is a trace of its own per run, plus one child span in the trace of every upload
  whose job or endpoint it is still driving (linked to the run's span);
- the first scoring answer of an endpoint (per worker) is a child of its upload's trace; later
  calls are their own traces with a link to it (one trace stays readable under traffic).

The ledger look-ups that find a parent run only when tracing is on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

log = logging.getLogger(__name__)

_lock = threading.Lock()
_configured = False
_tracer: Any = None  # an opentelemetry Tracer when tracing is on
_scoring_parents: dict[str, tuple[float, str | None, str | None]] = {}  # model -> (at, endpoint, traceparent)
_answered: set[str] = set()  # endpoints whose first answer was traced as part of their upload
PARENT_CACHE_S = 60.0
RECONCILE_MAX_TRACES = 20
TRACER_NAME = "finetune-autopilot"


def _settings() -> Any:
    from shared.settings import get_settings

    return get_settings()


def _aad_credential(auth: str, client_id: str) -> Any:
    """A ManagedIdentityCredential for ``Authorization=AAD[;ClientId=...]`` (None for anything else)."""
    try:
        pairs = dict(part.split("=", 1) for part in auth.split(";") if part.strip())
    except ValueError:
        log.error("APPLICATIONINSIGHTS_AUTHENTICATION_STRING is malformed (expected Authorization=AAD;ClientId=...)")
        return None
    pairs = {k.strip().lower(): v.strip() for k, v in pairs.items()}
    if pairs.get("authorization", "").upper() != "AAD":
        return None
    from azure.identity import ManagedIdentityCredential

    cid = pairs.get("clientid") or client_id or None
    return ManagedIdentityCredential(client_id=cid) if cid else ManagedIdentityCredential()


def configure(settings: Any = None) -> bool:
    """Turn exporting on when the connection string is set (once per process); True when tracing."""
    global _configured, _tracer
    with _lock:
        if _configured:
            return _tracer is not None
        _configured = True
        try:
            s = settings or _settings()
        except Exception:  # noqa: BLE001 - a settings error is reported by the domain call, not here
            log.debug("telemetry: settings unreadable; spans go to the log only", exc_info=True)
            return False
        connection = getattr(s, "appinsights_connection_string", "")
        if not connection:
            return False
        try:
            from azure.monitor.opentelemetry import configure_azure_monitor
            from opentelemetry import trace

            kwargs: dict[str, Any] = {"connection_string": connection}
            credential = _aad_credential(getattr(s, "appinsights_authentication_string", ""), getattr(s, "azure_client_id", ""))
            if credential is not None:
                kwargs["credential"] = credential
            configure_azure_monitor(**kwargs)
            _tracer = trace.get_tracer(TRACER_NAME)
            log.info("telemetry: exporting spans to Application Insights")
        except Exception:  # noqa: BLE001 - telemetry must never stop the app
            log.exception("telemetry: could not configure Azure Monitor; spans go to the log only")
            _tracer = None
        return _tracer is not None


def use_tracer_provider(provider: Any) -> None:
    """Tests: trace into ``provider`` (e.g. with an in-memory exporter); None resets to unconfigured."""
    global _configured, _tracer
    with _lock:
        _scoring_parents.clear()
        _answered.clear()
        if provider is None:
            _configured, _tracer = False, None
        else:
            _configured, _tracer = True, provider.get_tracer(TRACER_NAME)


def enabled() -> bool:
    return configure() if not _configured else _tracer is not None


# ------------------------------------------------------------------------------- spans

def _traceparent(otel_span: Any) -> str | None:
    ctx = otel_span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _context_of(traceparent: str | None) -> Any:
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


def _span_context_of(traceparent: str) -> Any:
    from opentelemetry import trace

    ctx = _context_of(traceparent)
    return trace.get_current_span(ctx).get_span_context() if ctx is not None else None


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if isinstance(v, bool | int | float | str) else str(v)) for k, v in attributes.items() if v is not None}


class Span:
    """What a handler holds inside ``with telemetry.span(...)``: add attributes, read the traceparent."""

    def __init__(self, name: str, attributes: dict[str, Any]):
        self.name = name
        self.attributes = _clean(attributes)
        self.otel: Any = None

    def set(self, **attributes: Any) -> Span:
        clean = _clean(attributes)
        self.attributes.update(clean)
        if self.otel is not None and clean:
            self.otel.set_attributes(clean)
        return self

    def outcome(self, result: Any) -> Span:
        """Copy the usual identifiers off a domain result (dataset_id, job_name, model, endpoint, status...)."""
        names = {"dataset_id": "dataset_id", "job_name": "job", "model": "model", "endpoint": "endpoint",
                 "status": "outcome_status", "action": "outcome_status", "blob_name": "blob_name"}
        return self.set(**{attr: getattr(result, field, None) for field, attr in names.items()})

    @property
    def traceparent(self) -> str | None:
        return _traceparent(self.otel) if self.otel is not None else None


class _IdleSpan(Span):
    def set(self, **attributes: Any) -> Span:
        return self


_IDLE = _IdleSpan("idle", {})  # handed out when a span records nothing (attributes set on it are dropped)


def _log(handle: Span, started: float, error: BaseException | None, level: int) -> None:
    if not log.isEnabledFor(level):
        return
    fields = {**handle.attributes, "duration_ms": round((time.perf_counter() - started) * 1000, 1),
              "outcome": "error" if error is not None else "ok"}
    if handle.otel is not None:
        ctx = handle.otel.get_span_context()
        fields["trace_id"], fields["span_id"] = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
    text = " ".join(f"{k}={v}" for k, v in fields.items())
    log.log(level, "span %s %s", handle.name, text, extra={"span": handle.name, "span_fields": fields})


@contextmanager
def span(name: str, *, parent: str | None = None, links: list[str] | tuple[str, ...] = (), level: int = logging.INFO,
         **attributes: Any) -> Iterator[Span]:
    """A span named ``name`` (child of ``parent``, a W3C traceparent, when given; ``links`` to others)."""
    handle = Span(name, attributes)
    started = time.perf_counter()
    error: BaseException | None = None
    scope: Any = contextlib.nullcontext()  # no exporter: the span is the log line alone
    if enabled():
        from opentelemetry.trace import Link

        link_objs = [Link(sc) for sc in (_span_context_of(tp) for tp in links if tp) if sc is not None and sc.is_valid]
        scope = _tracer.start_as_current_span(name, context=_context_of(parent), links=link_objs, attributes=handle.attributes)
    with scope as otel:
        handle.otel = otel
        try:
            yield handle
        except BaseException as exc:
            error = exc
            raise
        finally:
            _log(handle, started, error, level)


# ------------------------------------------------------------------------------- the upload's trace

def _ledger() -> Any:
    from shared.ledger import Ledger

    return Ledger.from_settings(_settings())


def trace_of_dataset(ledger: Any, dataset_id: str | None) -> str | None:
    from shared.ledger import DATASET

    record = ledger.get(DATASET, dataset_id) if dataset_id else None
    return record.get("traceparent") if record is not None else None


def trace_of_job(ledger: Any, job_name: str | None) -> tuple[str | None, str | None]:
    """(dataset id, traceparent of its upload) of a job."""
    from shared.ledger import JOB

    job = ledger.get(JOB, job_name) if job_name else None
    dataset_id = job.get("dataset_id") if job is not None else None
    return dataset_id, trace_of_dataset(ledger, dataset_id)


def _remember(handle: Span) -> None:
    """Store the upload span's traceparent on its dataset record (the first delivery's wins)."""
    dataset_id, traceparent = handle.attributes.get("dataset_id"), handle.traceparent
    if not dataset_id or not traceparent:
        return
    from shared.ledger import DATASET

    try:
        ledger = _ledger()
        record = ledger.get(DATASET, dataset_id)
        if record is not None and not record.get("traceparent"):
            ledger.annotate(DATASET, dataset_id, traceparent=traceparent)
    except Exception:  # noqa: BLE001 - losing the link loses telemetry, never data
        log.warning("telemetry: could not store the trace of dataset %s", dataset_id, exc_info=True)


@contextmanager
def upload_span(blob_name: str) -> Iterator[Span]:
    """The blob trigger's span: the root of the upload's trace."""
    with span("prepare_chat_data", blob_name=blob_name) as handle:
        yield handle
        if handle.otel is not None:
            _remember(handle)


@contextmanager
def job_span(name: str, job_name: str | None, **attributes: Any) -> Iterator[Span]:
    """A span in the trace of the upload that started ``job_name`` (when tracing is on)."""
    dataset_id = parent = None
    if job_name and enabled():
        try:
            dataset_id, parent = trace_of_job(_ledger(), job_name)
        except Exception:  # noqa: BLE001
            log.debug("telemetry: no parent for job %s", job_name, exc_info=True)
    with span(name, parent=parent, job=job_name, dataset_id=dataset_id, **attributes) as handle:
        yield handle


def _in_flight_traces(ledger: Any) -> list[tuple[str, str | None, str]]:
    """(dataset id, job, traceparent) of uploads whose job or endpoint reconcile is still driving."""
    from shared.ledger import ENDPOINT, JOB

    out: list[tuple[str, str | None, str]] = []
    jobs = [(r.id, r.get("dataset_id")) for r in ledger.list(JOB, states=["submitted"])]
    for ep in ledger.list(ENDPOINT, states=["provisioning", "deleting"]):
        jobs.append((ep.get("job_name"), None))
    seen: set[str] = set()
    for job_name, dataset_id in jobs[: RECONCILE_MAX_TRACES * 2]:
        if dataset_id is None:
            dataset_id, traceparent = trace_of_job(ledger, job_name)
        else:
            traceparent = trace_of_dataset(ledger, dataset_id)
        if traceparent and dataset_id not in seen:
            seen.add(dataset_id)
            out.append((dataset_id, job_name, traceparent))
        if len(out) >= RECONCILE_MAX_TRACES:
            break
    return out


@contextmanager
def reconcile_span() -> Iterator[Span]:
    """The reconcile run's span, plus a child span in the trace of each upload it is still driving."""
    if not enabled():
        with span("reconcile") as handle:
            yield handle
        return
    try:
        uploads = _in_flight_traces(_ledger())
    except Exception:  # noqa: BLE001
        log.debug("telemetry: could not list the uploads in flight", exc_info=True)
        uploads = []
    with span("reconcile", links=[tp for _, _, tp in uploads], uploads=len(uploads)) as run, ExitStack() as stack:
        for dataset_id, job_name, traceparent in uploads:
            stack.enter_context(span("reconcile", parent=traceparent, links=[run.traceparent or ""], level=logging.DEBUG,
                                     dataset_id=dataset_id, job=job_name))
        yield run


def _scoring_parent(model: str | None) -> tuple[str | None, str | None]:
    """(endpoint, upload traceparent) serving ``model`` (default: the app's model), cached a minute."""
    model = model or getattr(_settings(), "model_name", None)
    if not model:
        return None, None
    now = time.monotonic()
    cached = _scoring_parents.get(model)
    if cached is not None and now - cached[0] < PARENT_CACHE_S:
        return cached[1], cached[2]
    from shared.ledger import ENDPOINT, ROUTE

    ledger = _ledger()
    route = ledger.get(ROUTE, model)
    endpoint = route.get("endpoint") if route is not None else None
    record = ledger.get(ENDPOINT, endpoint) if endpoint else None
    traceparent = trace_of_job(ledger, record.get("job_name"))[1] if record is not None else None
    _scoring_parents[model] = (now, endpoint, traceparent)
    return endpoint, traceparent


@contextmanager
def scoring_span(name: str, body: bytes) -> Iterator[Span]:
    """A scoring call's span; the first answer of an endpoint joins its upload's trace."""
    if not enabled():
        if not log.isEnabledFor(logging.DEBUG):  # the hot path: nothing to record, nothing to do
            yield _IDLE
            return
        with span(name, level=logging.DEBUG) as handle:
            yield handle
        return
    model = endpoint = traceparent = None
    try:
        import orjson

        data = orjson.loads(body) if body else {}
        model = data.get("model") if isinstance(data, dict) and isinstance(data.get("model"), str) else None
        endpoint, traceparent = _scoring_parent(model)
    except Exception:  # noqa: BLE001 - a bad body is the scorer's to report
        log.debug("telemetry: no parent for a scoring call", exc_info=True)
    with _lock:
        first = bool(endpoint and traceparent) and endpoint not in _answered
        if first:
            _answered.add(endpoint)  # type: ignore[arg-type]
    with span(name, parent=traceparent if first else None, links=[] if first or not traceparent else [traceparent],
              level=logging.DEBUG, model=model or getattr(_settings(), "model_name", None), endpoint=endpoint,
              first_answer=first) as handle:
        yield handle
