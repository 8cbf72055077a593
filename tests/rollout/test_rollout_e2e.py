"""Judge, canary, roll back: one collection's versions on the real local stack with the real SmolLM2.

Real Azurite, the real local Functions host (blob trigger, Event Grid webhook, follow-up queue, HTTP),
the real local workspace (LoRA fine-tunes of SmolLM2-135M-Instruct, one endpoint whose router splits
traffic between a deployment per version) and the real evaluation (shared.evaluation: held-out
conversations carved from the corpus and kept as it grows, ROUGE-L against the champion on the
champion's eval set, the collection's house-style rule). The canary runs with the default rule
(shared.rollout.canary: 10% of the traffic, errors after 5 requests, latency after 20 requests per
deployment and only past x2 and +500 ms). A client loop scores the collection's model once a second
from the moment it serves to the end.

1. two house-style uploads: version 1 is judged against the floors (EVAL_FLOORS, the house-style
   rule) before it serves; version 2 deploys beside it in the same endpoint, passes
   evaluation, takes CANARY_PERCENT of live traffic, then all of it (the old deployment deleted);
2. a larger upload whose answers are all one unrelated sentence: version 3 is rejected by evaluation,
   by the primary metric against the champion (on the champion's eval set: the batch displaced
   none of it), its deployment deleted; version 2 keeps 100% of the traffic;
3. the operator retires that batch; a new house-style upload gives version 4, which passes evaluation;
   its deployment is killed during its canary: it is rolled back by itself within the canary window.
The client loop never gets a 5xx. The figures (times per phase) are printed for docs/rollout.md.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from scripts.make_sample_data import pirate_conversations
from shared.backends import get_backend
from shared.datasets.collections import model_name_for
from shared.ledger import DATASET, ENDPOINT, JOB, ROUTE, Ledger
from shared.ledger import records as R
from shared.settings import use_settings
from shared.storage import blob_service
from tests.support import free_port, wait_until

pytestmark = pytest.mark.timeout(2700)  # four SmolLM2 fine-tunes and three evaluations on a shared 2-core CPU

KEY = "rollout-e2e-key"
COLLECTION = "support"
UNRELATED = "Please remember that the quarterly parking permits are renewed at the front desk."


def jsonl(rows: list[dict]) -> bytes:
    return ("\n".join(json.dumps(r) for r in rows) + "\n").encode()


def unrelated(count: int, seed: int) -> list[dict]:
    rows = []
    for row in pirate_conversations(count, seed=seed):
        messages = [dict(m, content=UNRELATED) if m["role"] == "assistant" else m for m in row["messages"]]
        rows.append({**row, "prompt": row["prompt"] + " (batch b)", "messages": [
            dict(m, content=m["content"] + " (batch b)") if m["role"] == "user" else m for m in messages]})
    return rows


class ClientLoop:
    """A client app: one chat completion a second against the collection's model, every status kept."""

    def __init__(self, base_url: str, model: str) -> None:
        self.statuses: Counter[int] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base_url, model), daemon=True)

    def _run(self, base_url: str, model: str) -> None:
        with httpx.Client(base_url=base_url, timeout=180, headers={"x-functions-key": KEY}) as client:
            while not self._stop.is_set():
                try:
                    reply = client.post("/api/v1/chat/completions", json={
                        "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Who are you?"}]})
                    self.statuses[reply.status_code] += 1
                    if reply.status_code >= 500:
                        self.failures.append(f"{reply.status_code}: {reply.text[:200]}")
                except httpx.HTTPError as exc:
                    self.statuses[0] += 1
                    self.failures.append(f"transport: {type(exc).__name__}")
                self._stop.wait(1.0)

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(200)


def test_promoted_through_a_canary_rejected_by_evaluation_rolled_back_by_itself(storage_settings, tmp_path: Path):
    from devhost.host import run_host

    port = free_port()
    # Every CANARY_ and EVAL_ threshold is the default except these, each for the reason given.
    settings = storage_settings.replace(
        training_mode="corpus", local_base_model="smollm2",  # the story itself: a collection, the real model
        coalesce_s=0,  # each upload is its own corpus at once (no coalescing window to wait out)
        function_key=KEY, eventgrid_webhook_url=f"http://127.0.0.1:{port}/runtime/webhooks/eventgrid?functionName=on_job_event",
        # a few dozen LoRA steps, as the demo trains (the default recipe would take an hour per version here)
        finetune_params={"max_steps": 24, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "max_seq_length": 96},
        # reconcile every 20 s instead of 5 min (the follow-up queue does the work; reconcile is the backstop),
        # and no janitor run in the middle of the story
        reconcile_schedule="*/20 * * * * *", janitor_schedule="0 0 0 1 1 *",
        # The corpora here are a few dozen conversations: at the default EVAL_FRACTION (10%) the first
        # would hold out 2. A quarter of the digest space and a cap of 12 let the first upload fill the
        # set (so every later version is judged on the same 12, which no later batch displaces) and
        # keep each evaluation to 24 SmolLM2 answers on the shared CPU.
        eval_fraction=0.25, eval_max_conversations=12,
        # ROUGE-L moves by a few hundredths between two equally good versions on 12 conversations:
        # the default margin (0.02) would reject a healthy version 2 or 4 by chance.
        eval_margin=0.1,
        eval_floors={"rouge_l": 0.05},  # = the default (storage_settings drops the floors for the tiny model)
        eval_rules={COLLECTION: [{"name": "house style", "must": "(?i)(ahoy|arr|matey)", "min_pass_rate": 0.8}]},
        # a 2-minute window instead of 10 (a duration, not a threshold: the rule is the default one)
        canary_minutes=2.0,
    )
    use_settings(settings)
    ledger = Ledger.from_settings(settings)
    backend = get_backend(settings)
    model = model_name_for(settings, COLLECTION)
    chat = blob_service(settings).get_container_client(settings.chat_data_container)
    figures: dict[str, float] = {}
    t0 = time.monotonic()

    def rollout_of(version: str):  # noqa: ANN202
        return ledger.get(R.ROLLOUT, f"{model}:{version}")

    def newest_rollout():  # noqa: ANN202
        return max(ledger.list(R.ROLLOUT), key=lambda r: int(r.get("version")), default=None)

    try:
        with run_host("function_app:app", settings=settings, port=port, poll_interval_s=0.5) as host:
            chat.upload_blob(f"{COLLECTION}/day1.jsonl", jsonl(pirate_conversations(48, seed=1)))
            route = wait_until(lambda: ledger.get(ROUTE, model), 900, "version 1 to serve", 2.0)
            endpoint = route.get("endpoint")
            figures["version 1 serving (s)"] = time.monotonic() - t0
            with ClientLoop(host.base_url, model) as loop:
                # 1. a second house-style upload: version 2 beside version 1, judged, canaried, promoted
                t1 = time.monotonic()
                chat.upload_blob(f"{COLLECTION}/day2.jsonl", jsonl(pirate_conversations(96, seed=2)))
                v2 = wait_until(lambda: newest_rollout() if newest_rollout() and newest_rollout().get("version") != "1"
                                else None, 900, "version 2 to deploy beside version 1", 2.0)
                assert v2.get("endpoint") == endpoint, "beside the champion, never a second endpoint"
                assert len([e for e in ledger.list(ENDPOINT) if e.state != "deleted"]) == 1
                canary = wait_until(lambda: rollout_of(v2.get("version")) if rollout_of(v2.get("version")).state
                                    not in R.ROLLOUT_LIVE - {R.ROLLOUT_CANARY} else None, 900, "version 2 judged", 2.0)
                assert canary.state == R.ROLLOUT_CANARY, canary.fields
                assert ledger.get(R.EVALUATION, f"{model}:1").get("reason").startswith(
                    "promoted: all 1 rules kept; first version meets the floors (rouge_l"), "version 1 judged on the floors"
                figures["v2: candidate deployed -> decision (s)"] = _seconds(canary.get("ready_at"), canary.get("canary")["started_at"])
                done = wait_until(lambda: rollout_of(v2.get("version")) if rollout_of(v2.get("version")).state
                                  not in R.ROLLOUT_LIVE else None, 600, "version 2's canary to end", 2.0)
                assert done.state == R.ROLLOUT_PROMOTED, done.fields
                # the old deployment's deletion follows the decision (cleanup_done)
                wait_until(lambda: rollout_of(v2.get("version")).get("cleanup_done"), 120, "the old deployment deleted", 1.0)
                assert ledger.get(ROUTE, model).get("model_version") == v2.get("version")
                record = json.loads((Path(settings.local_workspace_dir) / "endpoints" / endpoint / "record.json").read_text())
                assert record["traffic"] == {v2.get("deployment"): 100} and list(record["deployments"]) == [v2.get("deployment")]
                figures["v2: upload -> promoted (s)"] = time.monotonic() - t1

                # 2. a larger batch of one unrelated sentence: version 3 rejected by evaluation
                t2 = time.monotonic()
                chat.upload_blob(f"{COLLECTION}/batch-b.jsonl", jsonl(unrelated(160, seed=3)))
                v3 = wait_until(lambda: newest_rollout() if newest_rollout().get("version") != v2.get("version") else None,
                                900, "version 3 to deploy", 2.0)
                judged = wait_until(lambda: rollout_of(v3.get("version")) if rollout_of(v3.get("version")).state
                                    not in R.ROLLOUT_LIVE else None, 900, "version 3 judged", 2.0)
                assert judged.state == R.ROLLOUT_REJECTED, judged.fields
                wait_until(lambda: rollout_of(v3.get("version")).get("cleanup_done"), 120, "version 3's deployment deleted", 1.0)
                # rejected by the primary metric against the champion, on the champion's set (the reason
                # names every rule it broke too: on the champion's house-style prompts the candidate
                # mostly keeps the house style, so the rule alone may let it through)
                assert "worse than the champion beyond the margin: rouge_l" in judged.get("reason"), judged.get("reason")
                figures["v3: house-style rule broken too (1/0)"] = float("rule 'house style' kept by" in judged.get("reason"))
                v2_job = ledger.get(JOB, ledger.get(R.MODEL, f"{model}:{v2.get('version')}").get("job_name"))
                judged_on = ledger.get(R.EVALUATION, f"{model}:{v3.get('version')}").get("eval_counts")
                assert judged_on["champion_corpus_id"] == v2_job.get("corpus_id"), judged_on
                assert judged_on["carved"] == v2_job.get("corpus_counts")["eval"] > 0, (judged_on, v2_job.get("corpus_counts"))
                v3_job = ledger.get(JOB, ledger.get(R.MODEL, f"{model}:{v3.get('version')}").get("job_name"))
                assert v3_job.get("corpus_counts")["eval_kept"] == v2_job.get("corpus_counts")["eval"]  # none displaced
                metrics = judged.get("verdict")["metrics"]
                figures["v3: rouge_l candidate x1000"] = 1000 * metrics["candidate"]["rouge_l"]
                figures["v3: rouge_l champion x1000"] = 1000 * metrics["champion"]["rouge_l"]
                figures["eval set (carved, v2's corpus)"] = v2_job.get("corpus_counts")["eval"]
                record = json.loads((Path(settings.local_workspace_dir) / "endpoints" / endpoint / "record.json").read_text())
                assert record["traffic"] == {v2.get("deployment"): 100}, "the champion kept all of the traffic"
                assert v3.get("deployment") not in record["deployments"]
                assert ledger.get(R.MODEL, f"{model}:{v3.get('version')}").state == R.MODEL_REJECTED
                figures["v3: upload -> rejected (s)"] = time.monotonic() - t2

                # 3. the bad batch retired; version 4 passes evaluation, then its deployment dies in the canary
                bad = next(d for d in ledger.list(DATASET) if d.get("blob_name", "").endswith("batch-b.jsonl"))
                from shared.cli.commands import main as cli

                assert cli(["datasets", "retire", bad.id]) == 0
                t3 = time.monotonic()
                chat.upload_blob(f"{COLLECTION}/day3.jsonl", jsonl(pirate_conversations(64, seed=4)))
                v4 = wait_until(lambda: newest_rollout() if newest_rollout().get("version") != v3.get("version") else None,
                                900, "version 4 to deploy", 2.0)
                in_canary = wait_until(lambda: rollout_of(v4.get("version")) if rollout_of(v4.get("version")).state
                                       not in {R.ROLLOUT_DEPLOYING, R.ROLLOUT_EVALUATING} else None, 900, "version 4 judged", 2.0)
                assert in_canary.state == R.ROLLOUT_CANARY, in_canary.fields
                dep_pid = json.loads((Path(settings.local_workspace_dir) / "endpoints" / endpoint / "deployments"
                                      / v4.get("deployment") / "server.pid").read_text())["pid"]
                os.kill(dep_pid, signal.SIGKILL)  # our own deployment server, by its pid: it "starts failing"
                killed = time.monotonic()
                rolled = wait_until(lambda: rollout_of(v4.get("version")) if rollout_of(v4.get("version")).state
                                    != R.ROLLOUT_CANARY else None, 300, "version 4 to be rolled back", 1.0)
                assert rolled.state == R.ROLLOUT_ROLLED_BACK, rolled.fields
                wait_until(lambda: rollout_of(v4.get("version")).get("cleanup_done"), 120, "version 4's deployment deleted", 1.0)
                assert _seconds(rolled.get("canary")["started_at"], rolled.get("decided_at")) < settings.canary_minutes * 60
                figures["v4: killed -> rolled back (s)"] = time.monotonic() - killed
                figures["v4: upload -> rolled back (s)"] = time.monotonic() - t3
                record = json.loads((Path(settings.local_workspace_dir) / "endpoints" / endpoint / "record.json").read_text())
                assert record["traffic"] == {v2.get("deployment"): 100}
                assert ledger.get(ROUTE, model).get("model_version") == v2.get("version")
                time.sleep(3)
            assert loop.failures == [], (loop.statuses, loop.failures[:5])
            assert loop.statuses[200] > 20, loop.statuses
            figures["client requests (200)"] = loop.statuses[200]
            figures["client requests (5xx or none)"] = sum(n for s, n in loop.statuses.items() if s >= 500 or s == 0)
    finally:
        use_settings(settings)
        shutdown = getattr(backend, "shutdown", None)
        if shutdown:
            shutdown()
    figures["total (s)"] = time.monotonic() - t0
    print("\n" + "\n".join(f"| {k} | {v:.0f} |" for k, v in figures.items()))


def _seconds(start: str | None, end: str | None) -> float:
    from shared.ledger import parse_iso

    a, b = parse_iso(start), parse_iso(end)
    return (b - a).total_seconds() if a and b else float("nan")
