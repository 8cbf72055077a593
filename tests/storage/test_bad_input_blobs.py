"""Blob names that never poison the local blob trigger (issues 21.3 and 17.3), with the real app
behind the real local host and Azurite; and `make upload` refusing such names."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devhost.blob_listing import ListingResult
from devhost.blob_poller import read_poison_messages
from devhost.host import Host
from shared.observability.status import collect_status
from shared.observability.status_text import render_status
from shared.settings import Settings
from shared.storage import blob_service
from tests.fakes.workspace import InMemoryWorkspace
from tests.support import wait_until

pytestmark = pytest.mark.storage

THRESHOLD = 3
TINY_FILE = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


@pytest.fixture
def start_app_host(storage_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., Host]]:
    host_json = tmp_path / "host.json"
    host_json.write_text(json.dumps({"version": "2.0", "extensions": {"blobs": {"poisonBlobThreshold": THRESHOLD}}}))
    started: list[Host] = []

    def start() -> Host:
        host = Host("function_app:app", settings=storage_settings, port=0, poll_interval_s=0.2, host_json=host_json,
                    shutdown_timeout_s=5).start()
        started.append(host)
        return host

    yield start
    for h in started:
        h.stop()


def _upload(settings: Settings, name: str, data: bytes = TINY_FILE) -> None:
    blob_service(settings).get_blob_client(settings.chat_data_container, name).upload_blob(data, overwrite=True)


def _triggered(host: Host, settings: Settings, name: str) -> bool:
    wanted = f"New blob detected: {settings.chat_data_container}/{name}"
    return any(r.reason == wanted for r in host.invoker.of("prepare_chat_data"))


def _poisoned(settings: Settings) -> list[dict[str, Any]]:
    return [m for m in read_poison_messages(settings) if m["ContainerName"] == settings.chat_data_container]


def test_a_blob_storage_always_refuses_is_poisoned_at_the_threshold(
    start_app_host: Callable[..., Host], storage_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    _upload(storage_settings, "evil\\..\\..\\x.jsonl")  # Azurite stores it as evil/../../x.jsonl: unaddressable
    host = start_app_host()
    messages = wait_until(lambda: _poisoned(storage_settings), 30, "the blob to reach the poison queue", 0.2)
    assert [m["BlobName"] for m in messages] == ["evil/../../x.jsonl"]
    # Polls go on: the poisoned version is not tried again.
    seen = len(_attempts(caplog))
    wait_until(lambda: host._poller is not None and host._poller.poll_once() == 0, 10, "a poll that hands out nothing")
    attempts = _attempts(caplog)
    assert len(attempts) == THRESHOLD == seen, [r.getMessage() for r in attempts]
    assert [f"attempt {n} of {THRESHOLD}" in r.getMessage() for n, r in enumerate(attempts, 1)] == [True] * THRESHOLD
    assert all("evil/../../x.jsonl" in r.getMessage() for r in attempts)
    poller_records = [r for r in caplog.records if r.name == "devhost.blob_poller"]
    assert not [r.getMessage() for r in poller_records if r.exc_info], "an expected storage refusal logged a traceback"
    assert host.invoker.of("prepare_chat_data") == []  # refused before the function ran


def _attempts(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "devhost.blob_poller" and "attempt" in r.getMessage()]


def test_a_control_character_in_one_name_does_not_stall_the_trigger(
    start_app_host: Callable[..., Host], storage_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="devhost.blob_poller")
    bad = "b-ctl\x01name.jsonl"
    for name in ("a-first.jsonl", bad, "c-after.jsonl", "d-\x0bsecond.jsonl", "e-last.jsonl"):
        _upload(storage_settings, name)
    host = start_app_host()
    for name in ("a-first.jsonl", "c-after.jsonl", "e-last.jsonl", bad, "d-\x0bsecond.jsonl"):
        wait_until(lambda n=name: _triggered(host, storage_settings, n), 60, f"the trigger to run for {name!r}", 0.2)
    # an upload after the host started flows too
    _upload(storage_settings, "f-new.jsonl")
    wait_until(lambda: _triggered(host, storage_settings, "f-new.jsonl"), 30, "the trigger to run for a new upload", 0.2)
    # every version ran once: the receipts of unlistable names work as well
    reasons = [r.reason for r in host.invoker.of("prepare_chat_data")]
    assert len(reasons) == len(set(reasons)) == 6, reasons
    # said in the log and in status
    assert any("cannot be listed" in r.getMessage() and repr(bad) in r.getMessage() for r in caplog.records)
    triggers = collect_status(storage_settings, backend=InMemoryWorkspace())["triggers"]
    assert [t["state"] for t in triggers] == ["degraded"]
    assert set(triggers[0]["unlistable"]) == {bad, "d-\x0bsecond.jsonl"}


def test_a_stalled_trigger_is_said_loudly_in_the_log_and_in_status(
    start_app_host: Callable[..., Host], storage_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="devhost.blob_poller")
    host = start_app_host()
    poller = host._poller
    assert poller is not None
    poller.stop(5)  # its own polls would report the (healthy) listing in between
    watch = poller._watches[0]
    stalled = ListingResult(blobs=[], hidden=[], stalled="the container cannot be listed (HttpResponseError 500)",
                            last_listed="a.jsonl")
    poller._report_health(watch, stalled)
    status = collect_status(storage_settings, backend=InMemoryWorkspace())
    [trigger] = status["triggers"]
    assert trigger["state"] == "stalled" and trigger["container"] == storage_settings.chat_data_container
    assert "'a.jsonl'" in trigger["reason"] and "control character" in trigger["fix"]
    assert "BLOB TRIGGER STALLED: prepare_chat_data" in render_status(status)
    assert any("STALLED" in r.getMessage() and "Fix:" in r.getMessage() for r in caplog.records)
    # back to normal: status shows nothing
    poller._report_health(watch, ListingResult(blobs=[], hidden=[]))
    assert collect_status(storage_settings, backend=InMemoryWorkspace())["triggers"] == []


@pytest.mark.parametrize(
    ("name", "reason"),
    [("ctl\x01name.jsonl", "control character U+0001"), ("a\\b.jsonl", "backslash"), ("a/../b.jsonl", "'..'"),
     ("x" * 1100, "1024"), ("ends-with-dot.", "ends with")],
)
def test_upload_refuses_names_storage_cannot_handle(
    storage_settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, reason: str
) -> None:
    from devhost.stack import main

    data = tmp_path / "data.jsonl"
    data.write_bytes(TINY_FILE)
    assert main(["upload", str(data), "--name", name]) == 2
    assert reason in capsys.readouterr().err
    assert list(blob_service(storage_settings).get_container_client(storage_settings.chat_data_container).list_blobs()) == []
    assert main(["upload", str(data), "--name", "fine/name.jsonl"]) == 0
