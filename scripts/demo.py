"""The local end-to-end demo (`make demo`): the whole mission on the local backend.

Starts a private Azurite, the local Functions host and the local workspace, then:
upload sample chat data -> preparation report -> fine-tune job (progress) -> job-completed
event -> model registered -> endpoint deployed and active -> the same held-out questions to
the base model and to the fine-tuned model through the app's scoring route -> a shortened
idle threshold and the janitor deleting the idle endpoint. Every process it started is
stopped at the end, whatever happens. Exit code 0 only when every stage did what it should.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from devhost.azurite import Azurite, free_port, start, stop_process
from devhost.stack import offline_env
from localworkspace.ports import port_open
from scripts.make_sample_data import HELD_OUT, STYLE_OPENING, in_house_style
from scripts.make_sample_data import write as write_sample
from shared.settings import PROJECT_ROOT, Settings, load_settings

DEMO_DIR = PROJECT_ROOT / ".local" / "demo"
LOG_DIR = DEMO_DIR / "logs"
SAMPLE = PROJECT_ROOT / "data" / "sample_chat.jsonl"


class StageFailed(RuntimeError):
    pass


def say(text: str = "") -> None:
    print(text, flush=True)


# (stage title, time.monotonic() when it began): where the demo's time goes, printed at its end
STAGE_STARTS: list[tuple[str, float]] = []


def stage(n: int, title: str) -> None:
    STAGE_STARTS.append((f"[{n}] {title}", time.monotonic()))
    say()
    say(f"== [{n}] {title} " + "=" * max(0, 70 - len(title)))


def mark(title: str) -> None:
    """A step within the current stage, timed on its own in the table (no header printed)."""
    STAGE_STARTS.append((f"    {title}", time.monotonic()))


def stage_timings(end: float, started: float | None = None) -> str:
    """The table of seconds per stage (each stage lasts until the next one begins, the last until ``end``)."""
    marks = [*STAGE_STARTS, ("stop every process", end)]
    rows = [(title, marks[i + 1][1] - at) for i, (title, at) in enumerate(marks[:-1])]
    width = max((len(title) for title, _ in rows), default=10)
    lines = ["Stage timings (s; `make install` before the demo is not included):"]
    lines += [f"  {title:<{width}} {took:7.1f}" for title, took in rows]
    if started is not None:
        lines.append(f"  {'total':<{width}} {end - started:7.1f}")
    return "\n".join(lines)


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, interval: float = 1.0,
             progress: Callable[[], None] | None = None) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        if progress:
            progress()
        time.sleep(interval)
    raise StageFailed(f"timed out after {timeout_s:.0f}s waiting for {what}")


def http(method: str, url: str, body: dict | None = None, headers: dict[str, str] | None = None,
         timeout: float = 120.0) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else {}
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"raw": raw.decode(errors="replace")}




class Demo:
    def __init__(self, base_model: str, max_steps: int):
        self.azurite = Azurite(free_port(), free_port(), free_port())
        self.port = free_port()
        self.key = secrets.token_urlsafe(16)
        self.dashboard_url: str | None = None
        self.env = {
            "ML_BACKEND": "local",
            "AzureWebJobsStorage": self.azurite.connection_string,
            "LOCAL_WORKSPACE_DIR": str(DEMO_DIR / "workspace"),
            "LOCAL_BASE_MODEL": base_model,
            "FUNCTION_KEY": self.key,
            "EVENTGRID_WEBHOOK_URL": f"http://127.0.0.1:{self.port}/runtime/webhooks/eventgrid?functionName=on_job_event",
            "FINETUNE_PARAMS": json.dumps({"max_steps": max_steps}),
            # Reconcile often so a finished deployment gets its traffic within seconds.
            "RECONCILE_SCHEDULE": "*/5 * * * * *",
            # The janitor is triggered on demand at the end; its timer stays out of the way.
            "JANITOR_SCHEDULE": "0 0 0 1 1 *",
            "SCORING_REDEPLOY_ON_DEMAND": "false",
            # One upload: submit its collection's job at once instead of waiting for more uploads.
            "COALESCE_SECONDS": "0",
        }
        if base_model == "tiny-random":  # it answers noise: no evaluation floor is met (docs/rollout.md)
            self.env["EVAL_FLOORS"] = "{}"
        self.settings: Settings = load_settings(environ={**self.env})
        self.procs: list[int] = []
        self.host_pid: int | None = None

    # --- processes
    def start_azurite(self) -> None:
        location = DEMO_DIR / "azurite"
        shutil.rmtree(location, ignore_errors=True)  # each demo run starts from empty storage
        proc = start(self.azurite, location, LOG_DIR / "azurite.log")
        self.procs.append(proc.pid)
        say(f"Azurite      pid {proc.pid}, blob :{self.azurite.blob_port}, table :{self.azurite.table_port}  log {LOG_DIR / 'azurite.log'}")

    def start_host(self, extra_env: dict[str, str] | None = None) -> None:
        log_path = LOG_DIR / "host.log"
        env = offline_env({**self.env, **(extra_env or {})})
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "devhost.host", "--port", str(self.port), "--poll-interval", "1"],
                                    cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.host_pid = proc.pid
        wait_for("the local host to listen", lambda: proc.poll() is not None or port_open(self.port), 120, 0.3)
        if proc.poll() is not None:
            raise StageFailed(f"the local host exited with code {proc.returncode}; see {log_path}")
        say(f"Local host   pid {proc.pid}, http://127.0.0.1:{self.port}  log {log_path}")

    def stop_host(self) -> None:
        if self.host_pid:
            stop_process(self.host_pid, timeout_s=20)
            self.host_pid = None

    def stop_all(self) -> None:
        self.stop_host()
        try:
            from shared.backends.local import LocalBackend

            LocalBackend(self.settings).shutdown()
        except Exception as exc:  # noqa: BLE001 - keep stopping the rest
            say(f"(could not stop the local workspace's processes: {exc})")
        for pid in self.procs:
            stop_process(pid)

    # --- helpers
    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ledger(self):  # noqa: ANN201
        from shared.ledger import Ledger

        return Ledger.from_settings(self.settings)

    def score(self, question: str) -> str:
        body = {"input_data": {"input_string": [{"role": "user", "content": question}],
                               "parameters": {"temperature": 0.0, "do_sample": False, "max_new_tokens": 40}}, "params": {}}
        status, reply = http("POST", f"{self.api}/api/score", body, {"x-functions-key": self.key})
        if status != 200:
            raise StageFailed(f"/api/score answered {status}: {reply}")
        return str(reply.get("output", ""))


def base_model_answers(settings: Settings, questions: list[str]) -> list[str]:
    """The base model's answers, generated the way the endpoint generates (greedy, same length)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from localworkspace.base_model import ensure_base_model

    folder = ensure_base_model(settings.local_base_model, settings.local_model_cache)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    answers = []
    for q in questions:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
        answers.append(tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip())
    return answers


def run(demo: Demo) -> None:
    t0 = time.monotonic()
    stage(1, "Start the local stack (Azurite, local Functions host, local workspace)")
    demo.start_azurite()
    from shared.storage import blob_service, ensure_storage

    ensure_storage(demo.settings)
    demo.start_host()
    say(f"Workspace    {demo.settings.local_workspace_dir} (base model {demo.settings.base_model_name})")

    stage(2, "Upload sample chat data to the chat-data container")
    if not SAMPLE.exists():
        write_sample(SAMPLE)
    blob_name = f"sample-chat-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    with SAMPLE.open("rb") as f:
        blob_service(demo.settings).get_blob_client(demo.settings.chat_data_container, blob_name).upload_blob(f)
    say(f"uploaded {SAMPLE.relative_to(PROJECT_ROOT)} ({SAMPLE.stat().st_size} bytes) as {demo.settings.chat_data_container}/{blob_name}")

    stage(3, "Preparation (blob trigger prepare_chat_data)")
    ledger = demo.ledger()

    def dataset_done():
        for rec in ledger.list("dataset"):
            if rec.get("blob_name") == blob_name and rec.state in {"submitted", "rejected"}:
                return rec
        return None

    ds = wait_for("the dataset to be prepared", dataset_done, 180)
    report_blob = ds.get("report_blob")
    report = json.loads(blob_service(demo.settings).get_blob_client(demo.settings.prepared_container, report_blob)
                        .download_blob().readall())
    counts = report.get("counts", {})
    say(f"dataset {ds.id}: {ds.state}")
    say("counts: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    for err in report.get("errors", [])[:10]:
        say(f"  rejected line {err.get('line')}: {err.get('kind')}: {err.get('message')}")
    if ds.state != "submitted":
        raise StageFailed(f"the sample dataset was {ds.state}: {report.get('decision')}")

    stage(4, "Fine-tuning job submitted to the local workspace")
    job_name = ds.get("job_name")
    say(f"job {job_name} (report: {demo.settings.prepared_container}/{report_blob})")
    from shared.backends import get_backend
    from shared.backends.base import JOB_FINAL_STATES

    backend = get_backend(demo.settings)
    info = backend.get_job(job_name)
    say(f"job log: {info.log_path}")
    seen = {"lines": 0}

    def show_progress() -> None:
        if not info.log_path or not Path(info.log_path).exists():
            return
        lines = Path(info.log_path).read_text(errors="replace").splitlines()
        for line in lines[seen["lines"]:]:
            if any(w in line.lower() for w in ("step", "loss", "state", "event")):
                say("  " + line.strip()[:150])
        seen["lines"] = len(lines)

    final = wait_for("the fine-tuning job to end", lambda: (j := backend.get_job(job_name)).state in JOB_FINAL_STATES and j,
                     900, 2.0, show_progress)
    show_progress()
    say(f"job {job_name}: {final.state}  metrics: {json.dumps(final.metrics)}")
    if final.state != "completed":
        raise StageFailed(f"the job ended {final.state}: {final.error}; see {final.log_path}")

    stage(5, "Job-completed event -> model registered -> endpoint deployed (on_job_event + reconcile)")

    def job_recorded():
        rec = ledger.get("job", job_name)
        return rec if rec and rec.state not in {"submitted"} else None

    job_rec = wait_for("the job-completed event to be handled", job_recorded, 180)
    mark("event handled -> model registered")
    say(f"event handled by on_job_event: job {job_name} recorded {job_rec.state}, test loss "
        f"{job_rec.get('metrics', {}).get('base_test_loss', float('nan')):.3f} (base) -> {job_rec.get('metrics', {}).get('test_loss', float('nan')):.3f}")
    model_rec = wait_for("the model to be registered", lambda: (r := ledger.get("job", job_name)) and r.get("model") and r, 120)
    say(f"model registered: {model_rec.get('model')} at {model_rec.get('registered_at')} (MLflow registry)")
    mark("model registered -> deployment started")
    ep_rec = wait_for("the endpoint deployment to start", lambda: next(iter(ledger.list("endpoint")), None), 120)
    mark("deployment started -> active")
    say(f"deployment started: endpoint {ep_rec.id} {ep_rec.state} (instance {ep_rec.get('instance_type') or 'local'})")
    model_name = demo.settings.model_name
    active = wait_for("the endpoint to be deployed and active", lambda: ledger.get("active", model_name), 300, 2.0)
    endpoint = ledger.get("endpoint", active.get("endpoint"))
    say(f"endpoint {endpoint.id}: {endpoint.state}, active since {endpoint.get('active_since')}")

    stage(6, "Held-out questions: base model vs fine-tuned model (through POST /api/score)")
    questions = HELD_OUT[:6]
    fine = [demo.score(q) for q in questions]
    mark("the base model's answers (loaded in this process)")
    base = base_model_answers(demo.settings, questions)
    for q, b, f in zip(questions, base, fine, strict=True):
        say(f"Q: {q}")
        say(textwrap.indent(textwrap.fill(f"base      : {b}", 110), "  "))
        say(textwrap.indent(textwrap.fill(f"fine-tuned: {f}", 110), "  "))
    style_base = sum(in_house_style(a) for a in base)
    style_fine = sum(in_house_style(a) for a in fine)
    say(f"house style ('{STYLE_OPENING} ... arr!'): base {style_base}/{len(base)}, fine-tuned {style_fine}/{len(fine)}")
    if demo.settings.local_base_model == "smollm2" and style_fine <= style_base:
        raise StageFailed("the fine-tuned answers do not carry the house style more often than the base model's")

    stage(7, "Idle janitor: shorter idle threshold, janitor triggered, endpoint deleted")
    ep_port = backend.get_scoring_target(endpoint.id).url.split(":")[2].split("/")[0]
    demo.stop_host()
    demo.start_host({"IDLE_ENDPOINT_MINUTES": "0.05", "IDLE_GRACE_MINUTES": "0"})
    say("host restarted with IDLE_ENDPOINT_MINUTES=0.05 (3 s) and IDLE_GRACE_MINUTES=0; waiting 4 s of idleness")
    time.sleep(4)
    status, _ = http("POST", f"{demo.api}/admin/functions/delete_idle_endpoints", {}, {"x-functions-key": demo.key})
    say(f"POST /admin/functions/delete_idle_endpoints -> {status}")
    deleted = wait_for("the janitor to delete the idle endpoint",
                       lambda: (r := ledger.get("endpoint", endpoint.id)) and r.state == "deleted" and r, 120)
    say(f"endpoint {endpoint.id}: deleted ({deleted.get('delete_reason')}); est. hours saved {deleted.get('hours_saved')}, "
        f"cost saved {deleted.get('cost_saved')}")
    wait_for("the endpoint's server to stop listening", lambda: not port_open(int(ep_port)), 30)
    say(f"endpoint server port {ep_port}: closed; model {model_name} stays registered for scale-from-zero")
    mark("status and the dashboard")
    out = subprocess.run([sys.executable, "-m", "shared.cli", "status"], env=offline_env(demo.env), cwd=PROJECT_ROOT,
                         capture_output=True, text=True, timeout=120)
    say(out.stdout)
    demo.dashboard_url = save_dashboard(demo, endpoint.id)
    say(f"demo finished in {time.monotonic() - t0:.0f} s")


def save_dashboard(demo: Demo, endpoint_name: str) -> str:
    """Check the app's dashboard shows this run, save the page (the stack stops next), return its URL."""
    url = f"{demo.api}/api/dashboard?code={demo.key}"
    for _ in range(10):  # slow look-ups (job curves) fill in over a few requests, as the page's own refreshes do
        with urllib.request.urlopen(url, timeout=60) as r:
            status, page = r.status, r.read().decode()
        if status == 200 and "polyline" in page:
            break
        time.sleep(1)
    if status != 200 or endpoint_name not in page or "polyline" not in page:
        raise StageFailed(f"the dashboard ({url}) answered {status} without this run's endpoint and loss curve")
    snapshot = LOG_DIR / "dashboard.html"
    snapshot.write_text(page, encoding="utf-8")
    say(f"dashboard: {url} answered with the whole run (saved to {snapshot})")
    return url


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--base-model", default=os.environ.get("LOCAL_BASE_MODEL", "smollm2"), choices=["smollm2", "tiny-random"])
    p.add_argument("--max-steps", type=int, default=int(os.environ.get("DEMO_MAX_STEPS", "30")))
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the Makefile sets it (see there); before torch loads
    for k, v in offline_env().items():
        os.environ.setdefault(k, v)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    demo = Demo(args.base_model, args.max_steps)
    say(f"Logs of every stage: {LOG_DIR} (host.log, azurite.log); job logs in {demo.settings.local_workspace_dir}")
    started = time.monotonic()
    try:
        run(demo)
    except (StageFailed, RuntimeError) as exc:
        say()
        say(f"DEMO FAILED: {exc}")
        say(f"Logs: {LOG_DIR}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        stopping = time.monotonic()
        say("stopping every process the demo started ...")
        demo.stop_all()
        STAGE_STARTS.append(("stop every process", stopping))
        say()
        say(stage_timings(time.monotonic(), started))
    say("DEMO OK")
    # Last line: where to look. This run's host is stopped; `make up` serves the same page on port 7071.
    say(f"Dashboard: http://127.0.0.1:7071/api/dashboard?code=<FUNCTION_KEY> after `make up` "
        f"(this run's page: {LOG_DIR / 'dashboard.html'}; it was live at {demo.dashboard_url})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
