"""The local host's parts that need no storage: routes, blob paths, schedules, indexing, events."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import azure.functions as func
import pytest

from devhost.app_index import AppIndexError, index_app, resolve_expressions
from devhost.blob_poller import BlobTriggerPath
from devhost.eventgrid_delivery import EventDeliveryError, decode_event, parse_delivery, validation_code
from devhost.host import HostConfig
from devhost.http_routes import compile_route
from devhost.timers import TimerSchedule, TimerScheduler
from shared.settings import Settings


def match(template: str, path: str) -> dict[str, str] | None:
    pattern, _ = compile_route(template)
    m = pattern.fullmatch(path)
    return None if m is None else {k: v for k, v in m.groupdict().items() if v is not None}


def test_route_templates() -> None:
    assert match("items/{id:int}", "items/42") == {"id": "42"}
    assert match("items/{id:int}", "items/forty") is None
    assert match("items/{id}", "items/a/b") is None  # a parameter is one segment
    assert match("Items/{id}", "items/x") == {"id": "x"}  # case-insensitive like ASP.NET routing
    assert match("files/{*path}", "files/a/b/c.txt") == {"path": "a/b/c.txt"}
    assert match("files/{*path}", "files") == {}
    assert match("hello/{name?}", "hello") == {}
    assert match("hello/{name?}", "hello/ada") == {"name": "ada"}
    assert match("docs/{name}.json", "docs/report.json") == {"name": "report"}
    assert match("flags/{on:bool}", "flags/True") == {"on": "True"}
    assert match("g/{id:guid}", "g/3f2504e0-4f89-11d3-9a0c-0305e82c3301") == {"id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301"}
    assert match("g/{id:guid}", "g/nope") is None
    literal, constrained, plain, catch_all = (compile_route(t)[1] for t in ("a/new", "a/{id:int}", "a/{id}", "a/{*rest}"))
    assert literal < constrained < plain < catch_all


def test_blob_trigger_paths() -> None:
    path = BlobTriggerPath.parse("chat-data/{name}.jsonl")
    assert (path.container, path.prefix) == ("chat-data", "")
    assert path.match("team/a.jsonl") == {"name": "team/a"}
    assert path.match("a.json") is None
    nested = BlobTriggerPath.parse("prepared/in/{name}")
    assert nested.prefix == "in/" and nested.match("in/x") == {"name": "x"} and nested.match("out/x") is None
    assert BlobTriggerPath.parse("everything").match("any/blob") == {}
    with pytest.raises(ValueError, match="literal container"):
        BlobTriggerPath.parse("{container}/{name}")


def test_ncrontab_schedules() -> None:
    t0 = dt.datetime(2025, 1, 1, 0, 0, 1, tzinfo=dt.UTC)
    assert TimerSchedule("*/5 * * * * *").next_after(t0) == t0.replace(second=5)
    assert TimerSchedule("0 */5 * * * *").next_after(t0) == t0.replace(minute=5, second=0)
    assert TimerSchedule("30 0 9 * * 1-5").next_after(t0) == dt.datetime(2025, 1, 1, 9, 0, 30, tzinfo=dt.UTC)  # a Wednesday
    assert TimerSchedule("0 */10 * * * *").period(t0) == dt.timedelta(minutes=10)
    assert TimerSchedule("00:00:30").next_after(t0) == t0 + dt.timedelta(seconds=30)
    for bad in ("*/5 * * * *", "61 * * * * *", "every minute"):
        with pytest.raises(ValueError, match="NCRONTAB"):
            TimerSchedule(bad)


def test_use_monitor_defaults_like_the_real_host(unit_settings: Settings) -> None:
    app = func.FunctionApp()

    @app.timer_trigger(schedule="*/10 * * * * *", arg_name="t")
    def fast(t: func.TimerRequest) -> None: ...

    @app.timer_trigger(schedule="%JANITOR_SCHEDULE%", arg_name="t")
    def slow(t: func.TimerRequest) -> None: ...

    scheduler = TimerScheduler(list(index_app(app).values()), invoker=None, settings=unit_settings, host_id="x")  # type: ignore[arg-type]
    monitored = {t.function.name: t.use_monitor for t in scheduler._timers}
    assert monitored == {"fast": False, "slow": True}
    assert scheduler._timers[1].schedule.expression == unit_settings.janitor_schedule


def test_index_rejects_what_the_host_cannot_drive() -> None:
    app = func.FunctionApp()

    @app.route(route="r")
    @app.blob_output(arg_name="out", path="c/{rand-guid}", connection="AzureWebJobsStorage")
    def with_output(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
        return func.HttpResponse("x")

    with pytest.raises(AppIndexError, match="blob 'out'"):
        index_app(app)

    bus_app = func.FunctionApp()  # (storage queue triggers are driven: devhost.queues)

    @bus_app.service_bus_queue_trigger(arg_name="msg", queue_name="q", connection="ServiceBus")
    def on_message(msg: func.ServiceBusMessage) -> None: ...

    with pytest.raises(AppIndexError, match="serviceBusTrigger"):
        index_app(bus_app)


def test_binding_expressions_resolve_against_the_host_settings(unit_settings: Settings) -> None:
    custom = unit_settings.replace(chat_data_container="mine")
    assert resolve_expressions("%CHAT_DATA_CONTAINER%/{name}.jsonl", custom) == "mine/{name}.jsonl"
    with pytest.raises(AppIndexError, match="NOT_A_SETTING_ANYWHERE"):
        resolve_expressions("%NOT_A_SETTING_ANYWHERE%/x", custom)


def test_host_json(tmp_path: Path) -> None:
    path = tmp_path / "host.json"
    path.write_text(json.dumps({"extensions": {"blobs": {"poisonBlobThreshold": 2}, "http": {"routePrefix": ""}}}))
    config = HostConfig.load(path)
    assert (config.poison_blob_threshold, config.route_prefix) == (2, "")
    assert HostConfig.load(tmp_path / "missing.json").poison_blob_threshold == 5
    project = HostConfig.load()
    assert (project.poison_blob_threshold, project.blob_max_parallelism, project.route_prefix) == (5, 4, "api")


def test_event_deliveries(fixtures_dir: Path) -> None:
    samples = fixtures_dir / "eventgrid"
    eg = parse_delivery((samples / "run_status_changed.eventgrid.json").read_bytes())
    assert len(eg) == 1
    event = decode_event(eg[0])
    assert isinstance(event, func.EventGridEvent)
    assert event.event_type == "Microsoft.MachineLearningServices.RunStatusChanged"
    ce = decode_event(parse_delivery((samples / "run_status_changed.cloudevents.json").read_bytes())[0])
    assert isinstance(ce, func.CloudEvent) and ce.specversion == "1.0"
    assert validation_code([{"id": "1", "eventType": "v", "data": {"validationCode": "abc"}}]) == "abc"
    with pytest.raises(EventDeliveryError, match="validationCode"):
        validation_code([{"id": "1", "eventType": "v", "data": {}}])
    for body in (b"{", b"[]", b'"text"', b'[{"eventType": "x"}]'):
        with pytest.raises(EventDeliveryError):
            parse_delivery(body)


def test_make_down_signals_only_the_process_it_started(tmp_path) -> None:  # noqa: ANN001
    """A pid file names the process by pid and create time: once the OS gives the pid to another
    process, ``live_pid`` is None and ``make down`` signals nothing (a bare pid is still read)."""
    import os

    from localworkspace.workspace import live_pid, write_json, write_pid_file

    pid_file = tmp_path / "host.pid"
    write_pid_file(pid_file, os.getpid())
    assert live_pid(pid_file) == os.getpid()
    write_json(pid_file, {"pid": os.getpid(), "create_time": 1.0})  # same pid, another process's start
    assert live_pid(pid_file) is None
    pid_file.write_text(str(os.getpid()))  # written before pid files carried the create time
    assert live_pid(pid_file) == os.getpid()
    pid_file.write_text("not a pid")
    assert live_pid(pid_file) is None
    assert live_pid(tmp_path / "missing.pid") is None


def test_make_down_leaves_a_process_that_got_a_recorded_pid_alone(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """``make down`` (``devhost.stack down``: the host, the workspace's processes, Azurite): pid files
    naming a pid that the OS has since given to another process (same pid, another create time)
    signal nothing; a pid file naming that very process stops it."""
    import subprocess
    import sys

    from devhost import stack
    from localworkspace.workspace import Workspace, process_identity, write_json, write_pid_file
    from shared.settings import use_settings
    from tests.support import make_settings

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        reused = {"pid": other.pid, "create_time": process_identity(other.pid)["create_time"] - 100.0}
        monkeypatch.setattr(stack, "HOST_PID", tmp_path / "run" / "host.pid")
        monkeypatch.setattr(stack, "AZURITE_PID", tmp_path / "run" / "azurite.pid")
        ws = Workspace(tmp_path / "ws")
        for pid_file in (stack.HOST_PID, stack.AZURITE_PID, ws.job_dir("ftjob-1") / "runner.pid",
                         ws.endpoints_dir / "ep" / "server.pid"):
            write_json(pid_file, reused)
        use_settings(make_settings(LOCAL_WORKSPACE_DIR=str(ws.root)))
        assert stack.main(["down"]) == 0
        assert other.poll() is None, "make down signalled a process it did not start"
        assert not stack.HOST_PID.exists() and not stack.AZURITE_PID.exists()
        write_pid_file(stack.HOST_PID, other.pid)  # the process itself: stopped
        assert stack.main(["down"]) == 0
        assert other.wait(timeout=30) is not None and not stack.HOST_PID.exists()
    finally:
        use_settings(None)
        other.kill()
        other.wait()
