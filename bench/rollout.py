"""Two deployments side by side in one local endpoint: memory, the candidate's start, the router's cost.

Registers two versions of a model in a private local workspace (the base model itself, logged as an
MLflow chat model twice: what is served is the same size as a fine-tune's merged model), deploys
version 1 as an endpoint, then version 2 beside it as a candidate deployment, and prints:

* resident memory (RSS) of the endpoint's processes with one deployment (the baseline, measured first
  in the same run) and with two, and the ratio;
* seconds from the candidate's deployment call to its first healthy answer ("candidate deployed");
* the latency of a pinned scoring request through the endpoint's router against the same request
  sent straight to the deployment's own port (baseline), and the ratio;
* seconds from "candidate deployed" (healthy) to the evaluation's decision: the real evaluation
  pieces of ``judge_candidate`` (``--conversations`` eval conversations, each answered by both
  deployments through the router, pinned with ``azureml-model-deployment``, at most
  ``EVAL_PARALLELISM`` calls in flight; azure-ai-evaluation / sacrebleu scores; the promotion
  rule), against the same with one call in flight (baseline, same run), and the ratio. The canary
  that follows a promotion lasts ``CANARY_MINUTES`` by design (or ends at ``CANARY_REQUESTS``); a
  regression ends it at the first look (every 2-30 s) that sees it. The whole story with fine-tuned
  versions is the rollout tier (``make test-rollout`` prints its times; docs/rollout.md).

Run: ``.venv/bin/python bench/rollout.py [--model tiny-random|smollm2] [--requests 20]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(name, value)

from localworkspace.workspace import read_json, read_pid_file  # noqa: E402
from shared.backends.base import ModelRef  # noqa: E402
from shared.backends.local import LocalBackend  # noqa: E402
from shared.settings import PROJECT_ROOT, load_settings  # noqa: E402

BODY = {"input_data": {"input_string": [{"role": "user", "content": "Hello"}],
                       "parameters": {"max_new_tokens": 4, "do_sample": False}}, "params": {}}


def register_versions(kind: str, workspace: LocalBackend, name: str) -> list[ModelRef]:
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from localworkspace.base_model import ensure_base_model
    from localworkspace.trainer import _pip_requirements, ensure_experiment

    base = ensure_base_model(kind, PROJECT_ROOT / ".local" / "models")
    model = AutoModelForCausalLM.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    mlflow.set_tracking_uri(workspace.ws.tracking_uri)
    mlflow.set_registry_uri(workspace.ws.tracking_uri)
    experiment = ensure_experiment("bench-rollout", workspace.ws.artifact_root)  # artifacts inside the workspace
    refs = []
    for _ in range(2):
        with mlflow.start_run(experiment_id=experiment):
            info = mlflow.transformers.log_model(transformers_model={"model": model, "tokenizer": tokenizer}, name="model",
                                                 task="llm/v1/chat", pip_requirements=_pip_requirements(),
                                                 registered_model_name=name)
        refs.append(ModelRef(name, str(info.registered_model_version), "bench", kind))
    return refs


def endpoint_rss_mb(workspace: LocalBackend, endpoint: str) -> float:
    ep_dir = workspace.ws.endpoint_dir(endpoint)
    total = 0
    for pid_file in [ep_dir / "server.pid", *ep_dir.glob("deployments/*/server.pid")]:
        proc = read_pid_file(pid_file)
        try:
            total += psutil.Process(int(proc["pid"])).memory_info().rss if proc else 0
        except psutil.Error:
            pass
    return total / 2**20


def wait(predicate, timeout_s: float = 900):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"not within {timeout_s:.0f} s")


def timed_requests(url: str, headers: dict[str, str], n: int) -> list[float]:
    out = []
    with httpx.Client(timeout=120) as client:
        client.post(url, json=BODY, headers=headers).raise_for_status()  # warm-up
        for _ in range(n):
            t = time.perf_counter()
            client.post(url, json=BODY, headers=headers).raise_for_status()
            out.append((time.perf_counter() - t) * 1000)
    return out


def decision_s(settings, backend: LocalBackend, endpoint: str, n: int, parallelism: int) -> tuple[float, str]:  # noqa: ANN001
    """Seconds from a ready candidate to the evaluation's decision (answers, scores, rule), and the decision."""
    from shared.evaluation import decision as D
    from shared.evaluation.answers import AnswerStore, collect_answers
    from shared.evaluation.evalset import EvalSet, item_of
    from shared.evaluation.judge import score_answers
    from shared.rollout.answers import deployment_answerer

    items = [item_of([{"role": "user", "content": f"Tell me one thing about the sea (question {i})."},
                      {"role": "assistant", "content": "Ahoy matey! The sea is a fine thing to ask about, arr!"}],
                     "carved", "bench") for i in range(n)]
    answer = {role: deployment_answerer(backend, endpoint, dep, max_new_tokens=settings.eval_max_new_tokens)
              for role, dep in (("candidate", "version-2"), ("champion", "default"))}
    t0 = time.perf_counter()
    got, complete = collect_answers(items, answer, AnswerStore(None), parallelism=parallelism, budget_s=3600)
    assert complete and not any(e.get("error") for e in got.values()), [e.get("error") for e in got.values()][:3]
    figures, _ = score_answers(settings, EvalSet("bench", tuple(items), "bench", ()), got, ["candidate", "champion"])
    verdict = D.decide(figures["candidate"], figures["champion"], {}, primary=settings.eval_primary_metric,
                       margin=settings.eval_margin, floors={})
    return time.perf_counter() - t0, verdict.reason


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("tiny-random", "smollm2"), default="tiny-random")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--conversations", type=int, default=20, help="eval conversations of the decision")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rollout-") as tmp:
        settings = load_settings(environ={"LOCAL_WORKSPACE_DIR": str(Path(tmp) / "ws"), "LOCAL_BASE_MODEL": args.model,
                                          "AzureWebJobsStorage": "UseDevelopmentStorage=true"})
        backend = LocalBackend(settings)
        backend.ws.ensure()
        try:
            v1, v2 = register_versions(args.model, backend, "bench-rollout")
            endpoint = "bench-rollout-ep"
            backend.begin_deploy(v1, endpoint, tags={})
            wait(lambda: (info := backend.get_endpoint(endpoint)) and info.state == "succeeded")
            backend.set_traffic(endpoint)
            time.sleep(2)
            one = endpoint_rss_mb(backend, endpoint)
            t0 = time.monotonic()
            backend.begin_deploy_deployment(v2, endpoint, "version-2")
            wait(lambda: (d := backend.get_deployment(endpoint, "version-2")) and d.state == "succeeded")
            candidate_ready_s = time.monotonic() - t0
            time.sleep(2)
            two = endpoint_rss_mb(backend, endpoint)
            record = read_json(backend.ws.endpoint_dir(endpoint) / "record.json") or {}
            key = {"Authorization": f"Bearer {record['key']}"}
            direct = timed_requests(f"http://127.0.0.1:{record['deployments']['version-2']['port']}/score", key, args.requests)
            routed = timed_requests(f"http://127.0.0.1:{record['port']}/score",
                                    {**key, "azureml-model-deployment": "version-2"}, args.requests)
            # alternating (baseline, app, app, baseline), best of two: drift on a shared machine hits both alike
            base_1, _ = decision_s(settings, backend, endpoint, args.conversations, 1)
            app_1, reason = decision_s(settings, backend, endpoint, args.conversations, settings.eval_parallelism)
            app_2, _ = decision_s(settings, backend, endpoint, args.conversations, settings.eval_parallelism)
            base_2, _ = decision_s(settings, backend, endpoint, args.conversations, 1)
            decide_base, decide_app = min(base_1, base_2), min(app_1, app_2)
        finally:
            backend.shutdown()
    d50, r50 = statistics.median(direct), statistics.median(routed)
    print(json.dumps({"model": args.model, "rss_one_deployment_mb": round(one), "rss_two_deployments_mb": round(two),
                      "candidate_deploy_to_healthy_s": round(candidate_ready_s, 1),
                      "p50_direct_ms": round(d50, 1), "p50_through_router_ms": round(r50, 1),
                      "conversations": args.conversations, "deployed_to_decision_s": round(decide_app, 1),
                      "deployed_to_decision_one_in_flight_s": round(decide_base, 1), "decision": reason}, indent=2))
    print("\n| model | RSS, 1 deployment | RSS, 2 deployments | ratio | candidate deployed (s) | p50 direct | p50 via router | ratio |")
    print(f"| {args.model} | {one:.0f} MB | {two:.0f} MB | {two / one:.2f} | {candidate_ready_s:.1f} | {d50:.1f} ms | "
          f"{r50:.1f} ms | {r50 / d50:.2f} |")
    print(f"\n| model | conversations | deployed -> decision, {settings.eval_parallelism} in flight | one in flight (baseline) | ratio |")
    print(f"| {args.model} | {args.conversations} | {decide_app:.1f} s | {decide_base:.1f} s | {decide_app / decide_base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
