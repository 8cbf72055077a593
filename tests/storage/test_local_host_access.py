"""Issue 26.5: the local stack is not open by default (devhost.access, devhost.stack).

`make up` (``python -m devhost.stack up``) runs the host with a function key, generated and kept
in ``.local/function_key`` (0600) when ``FUNCTION_KEY`` is unset; a request without it gets 401.
Whatever the key, the host serves loopback ``Host`` values only and refuses cross-site writes.
"""

from __future__ import annotations

import io
import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from pathlib import Path

import httpx
import pytest

from devhost import access, stack
from devhost.host import Host
from shared.settings import Settings, use_settings
from tests.support import free_port

pytestmark = pytest.mark.storage

KEY = "access-test-key"


@pytest.fixture
def host(storage_settings: Settings, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[Host]:
    monkeypatch.setenv("DEVHOST_TEST_QUEUE", f"access-q-{uuid.uuid4().hex[:12]}")
    key = getattr(request, "param", KEY)
    started = Host("tests.devhost_app:app", settings=storage_settings.replace(function_key=key), port=0,
                   poll_interval_s=3600, shutdown_timeout_s=5).start()
    try:
        yield started
    finally:
        started.stop()


def test_a_request_without_the_key_gets_401_on_every_kind_of_route(host: Host) -> None:
    base = host.base_url
    assert httpx.get(f"{base}/api/greet/ada").status_code == 401
    assert httpx.post(f"{base}/admin/functions/yearly", json={}).status_code == 401
    assert httpx.get(f"{base}/admin/functions").status_code == 401
    webhook = httpx.post(f"{base}/runtime/webhooks/eventgrid?functionName=on_event", headers={"aeg-event-type": "Notification"},
                         json=[])
    assert webhook.status_code == 401  # the Event Grid webhook takes the key as code=, as in Azure
    assert httpx.get(f"{base}/api/greet/ada", headers={"x-functions-key": KEY}).status_code == 200
    assert httpx.post(f"{base}/admin/functions/yearly", params={"code": KEY}, json={}).status_code == 202
    assert "code=" in host.eventgrid_url("on_event")


@pytest.mark.parametrize("host", [KEY, ""], indirect=True, ids=["with-key", "no-key"])
def test_a_cross_site_post_is_refused_even_with_the_key(host: Host) -> None:
    """A page on another site POSTs to the host (a simple request needs no preflight): 403, nothing runs."""
    target = f"{host.base_url}/admin/functions/yearly?code={KEY}"
    for headers in ({"Origin": "https://evil.example", "Content-Type": "text/plain"},
                    {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "null"},
                    {"Origin": f"http://localhost:{host.port + 1}"}):
        reply = httpx.post(target, headers=headers, content=b"{}")
        assert reply.status_code == 403, (headers, reply.text)
        assert "refused" in reply.json()["error"]
    # The host's own pages and tools (no Origin, or its own origin) still write.
    own = {"Origin": host.base_url, "Sec-Fetch-Site": "same-origin"}
    assert httpx.post(target, headers=own, content=b"{}").status_code == 202
    assert httpx.post(target, content=b"{}").status_code == 202


@pytest.mark.parametrize("host", [KEY, ""], indirect=True, ids=["with-key", "no-key"])
def test_a_foreign_host_header_is_refused(host: Host) -> None:
    """DNS rebinding: the browser sends the attacker's name as Host; the host answers nothing but 403."""
    for name in ("evil.example", f"evil.example:{host.port}", "127.0.0.1.nip.io", "10.0.0.5"):
        reply = httpx.get(f"{host.base_url}/admin/functions", headers={"Host": name, "x-functions-key": KEY})
        assert reply.status_code == 403 and "not this local host" in reply.json()["error"], name
    for name in (f"127.0.0.1:{host.port}", f"localhost:{host.port}", "localhost", f"[::1]:{host.port}"):
        reply = httpx.get(f"{host.base_url}/admin/functions", headers={"Host": name, "x-functions-key": KEY})
        assert reply.status_code == 200, name


def test_the_stack_key_is_generated_once_kept_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / ".local" / "function_key"
    key, source = access.stack_function_key("", path)
    assert len(key) >= 32 and source.endswith("(new)")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert access.stack_function_key("", path) == (key, str(path))
    assert access.stack_function_key("mine", path) == ("mine", "FUNCTION_KEY")


def test_make_up_with_no_key_prints_one_and_a_request_without_it_gets_401(
        storage_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``python -m devhost.stack up`` as ``make up`` runs it (Azurite already up: the test's own)."""
    port = free_port()
    env = {"AzureWebJobsStorage": storage_settings.storage_connection, "CHAT_DATA_CONTAINER": storage_settings.chat_data_container,
           "PREPARED_CONTAINER": storage_settings.prepared_container, "LEDGER_TABLE": storage_settings.ledger_table,
           "LOCAL_WORKSPACE_DIR": str(tmp_path / "workspace"), "LOCAL_BASE_MODEL": "tiny-random",
           "LOCAL_HOST_PORT": str(port), "RECONCILE_SCHEDULE": "0 0 0 1 1 *", "JANITOR_SCHEDULE": "0 0 0 1 1 *",
           "FUNCTION_KEY": ""}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    run_dir = tmp_path / "run"
    monkeypatch.setattr(stack, "KEY_FILE", tmp_path / ".local" / "function_key", raising=False)
    monkeypatch.setattr(stack, "HOST_PID", run_dir / "host.pid")
    monkeypatch.setattr(stack, "AZURITE_PID", run_dir / "azurite.pid")
    monkeypatch.setattr(stack, "RUN_DIR", run_dir)
    monkeypatch.setattr(stack, "LOG_DIR", tmp_path / "logs")
    use_settings(None)  # the stack reads the environment, as `make up` does
    out = io.StringIO()
    try:
        with redirect_stdout(out):
            assert stack.main(["up"]) == 0
        printed = out.getvalue()
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/models", timeout=10).status_code == 401, printed
        key = (tmp_path / ".local" / "function_key").read_text().strip()
        assert f"Function key: {key}" in printed and "Reconcile: started" in printed
        assert f"Dashboard: http://127.0.0.1:{port}/api/dashboard?code={key}" in printed
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/v1/models", timeout=10).status_code == 401
        assert httpx.post(f"{base}/admin/functions/reconcile", json={}, timeout=10).status_code == 401
        assert httpx.get(f"{base}/api/v1/models", headers={"x-functions-key": key}, timeout=30).status_code == 200
        assert httpx.get(f"{base}/api/dashboard", params={"code": key, "refresh": "0"}, timeout=60).status_code == 200
        with redirect_stdout(io.StringIO()):  # a second `make up` reuses the kept key
            assert stack.main(["up"]) == 0
        assert (tmp_path / ".local" / "function_key").read_text().strip() == key
    finally:
        stack.stop_host()
        use_settings(storage_settings)


def test_the_local_workspace_sends_job_events_with_the_key_as_code() -> None:
    from shared.backends.local import webhook_with_key

    url = "http://127.0.0.1:7071/runtime/webhooks/eventgrid?functionName=on_job_event"
    assert webhook_with_key(url, "k/1") == url + "&code=k%2F1"
    assert webhook_with_key(url + "&code=mine", "k") == url + "&code=mine"  # a URL that carries one keeps it
    assert webhook_with_key(url, "") == url
