"""The dashboard in real headless Chromium (Debian's ``chromium``, driven by Playwright), on a real local run.

Real Azurite, the real local Functions host (blob polling, timers, HTTP with a function key)
and the real local workspace (the tiny model's LoRA fine-tune, MLflow, an endpoint server).
The browser opens the page once and never navigates again: every change below must arrive by
the page's own refresh. It shows the empty workspace, a rejected upload with its line numbers,
a completed job with its loss curve, a deployed endpoint that served a call and was then
deleted by the janitor as idle; and a clear page when storage is down. The run saves a
screenshot to ``docs/dashboard.png`` (docs/dashboard.md shows it).

``make test-browser`` installs Chromium (``apt-get install -y chromium``) when it is missing;
Playwright never downloads a browser here (``executable_path``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import azure.functions as func
import httpx
import pytest

from scripts.make_sample_data import write
from shared.ledger import ENDPOINT, JOB, ROUTE, Ledger
from shared.settings import use_settings
from shared.storage import blob_service
from tests.fakes.uploads import MOSTLY_BAD
from tests.support import ROOT, free_port, wait_until

pytestmark = [pytest.mark.browser, pytest.mark.e2e, pytest.mark.storage]

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
SCREENSHOT = ROOT / "docs" / "dashboard.png"
KEY = "browser-function-key"
REFRESH_S = 2
STEP_TIMEOUT_MS = 60_000
JOB_TIMEOUT_S = 300
IDLE_MINUTES = 0.5


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: `make test-browser` installs Debian's chromium"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_dashboard_follows_a_real_run_in_chromium(storage_settings, browser, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    from devhost.host import run_host

    settings = storage_settings.replace(
        function_key=KEY,
        eventgrid_webhook_url=f"http://127.0.0.1:{free_port()}/runtime/webhooks/eventgrid",  # lost: reconcile polls the job
        finetune_params={"max_steps": 4, "logging_steps": 1},
        reconcile_schedule="*/2 * * * * *",
        janitor_schedule="*/3 * * * * *",
        idle_endpoint_minutes=IDLE_MINUTES,
        idle_grace_minutes=0.0,
        activity_flush_s=1,
        training_mode="upload",  # one upload, one job, under the app's model name (corpus mode: tests/integration/test_corpus_e2e.py)
    )
    use_settings(settings)
    ledger = Ledger.from_settings(settings)
    good = tmp_path / "good.jsonl"
    write(good, count=60, seed=11, malformed=0)
    container = blob_service(settings).get_container_client(settings.chat_data_container)
    from shared.backends import get_backend

    backend = get_backend(settings)
    try:
        with run_host("function_app:app", settings=settings, port=0, poll_interval_s=0.5) as host:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            opened = time.monotonic()
            page.goto(f"{host.base_url}/api/dashboard?refresh={REFRESH_S}&code={KEY}")
            print(f"first page in {time.monotonic() - opened:.2f} s")
            expect(page.locator("#empty")).to_be_visible()

            # a rejected upload: shown with its line numbers and reasons, by the page's own refresh
            container.upload_blob("team/broken.jsonl", MOSTLY_BAD)
            rejected = page.locator(".dataset", has_text="team/broken.jsonl")
            expect(rejected.locator(".rejected")).to_contain_text("line 11:", timeout=STEP_TIMEOUT_MS)
            expect(rejected).to_contain_text("rejected")
            expect(page.locator("#empty")).to_have_count(0)

            # a good upload: job completed with its loss curve, model deployed, endpoint serving
            with good.open("rb") as f:
                container.upload_blob("team/good.jsonl", f)
            route = wait_until(lambda: ledger.get(ROUTE, settings.model_name), JOB_TIMEOUT_S, "the model to serve", 2.0)
            endpoint = route.get("endpoint")
            job_name = next(j.id for j in ledger.list(JOB))
            job = page.locator(".job", has_text=job_name)
            expect(job).to_contain_text("completed", timeout=STEP_TIMEOUT_MS)
            expect(job.locator('polyline[data-series="train_loss"]')).to_have_count(1, timeout=STEP_TIMEOUT_MS)
            expect(job.locator('[data-marker="base test loss"]')).to_have_count(1)
            points = job.locator('polyline[data-series="train_loss"]').get_attribute("points")
            assert len(points.split()) == 4, points  # one point per logged step
            served = page.locator(".endpoint", has_text=endpoint)
            expect(served).to_contain_text("succeeded", timeout=STEP_TIMEOUT_MS)
            expect(served).to_contain_text("serving")

            # one call through the app, then silence: the janitor deletes it, the page shows when and what it saved
            reply = httpx.post(f"{host.base_url}/api/v1/chat/completions", headers={"x-functions-key": KEY}, timeout=120,
                               json={"model": settings.model_name, "messages": [{"role": "user", "content": "Ahoy?"}], "max_tokens": 4})
            assert reply.status_code == 200, reply.text
            wait_until(lambda: ledger.get(ENDPOINT, endpoint).state == "deleted", IDLE_MINUTES * 60 + 120, "the janitor's deletion", 2.0)
            expect(served).to_contain_text("deleted", timeout=STEP_TIMEOUT_MS)
            expect(served).to_contain_text("idle")
            expect(page.locator("svg.timeline path.deletion")).to_have_count(1)
            expect(page.locator("svg.timeline rect.requests")).to_have_count(1)
            assert "1 requests" in (page.locator("svg.timeline rect.requests title").text_content() or "")
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert SCREENSHOT.stat().st_size > 10_000
    finally:
        backend.shutdown()


def test_storage_going_down_is_a_clear_message_in_chromium(storage_settings, browser) -> None:
    from playwright.sync_api import expect

    from devhost.host import run_host
    from functions import dashboard as dashboard_functions

    port = free_port()  # nothing listens there
    down = storage_settings.replace(storage_connection=(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey="
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"))
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(dashboard_functions.bp)  # only the page
    use_settings(storage_settings)
    with run_host(app, settings=storage_settings, port=0) as host:
        page = browser.new_page()
        response = page.goto(f"{host.base_url}/api/dashboard?refresh={REFRESH_S}")
        assert response.status == 200
        expect(page.locator("#empty")).to_be_visible()
        use_settings(down)  # the functions read the process settings: from now on storage is unreachable
        expect(page.locator("#storage-down")).to_contain_text("Storage is unreachable", timeout=STEP_TIMEOUT_MS)
        expect(page.locator("#storage-down")).to_contain_text("make up")
        use_settings(storage_settings)  # and back: the page recovers by itself
        expect(page.locator("#empty")).to_be_visible(timeout=STEP_TIMEOUT_MS)
