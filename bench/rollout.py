"""Two deployments side by side in one local endpoint: memory, the candidate's start, the router's cost.

Registers two versions of a model in a private local workspace (the base model itself, logged as an
MLflow chat model twice: what is served is the same size as a fine-tune's merged model), deploys
version 1 as an endpoint, then version 2 beside it as a candidate deployment, and prints:

* resident memory (RSS) of the endpoint's processes with one deployment (the baseline, measured first
  in the same run) and with two, and the ratio;
* seconds from the candidate's deployment call to its first healthy answer ("candidate deployed");
* the latency of a pinned scoring request through the endpoint's router against the same request
  sent straight to the deployment's own port (baseline), and the ratio.

The time from "candidate deployed" to "decision" (evaluation, canary) is the rollout tier's figure
(``make test-rollout`` prints it; docs/rollout.md).

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("tiny-random", "smollm2"), default="tiny-random")
    parser.add_argument("--requests", type=int, default=20)
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
        finally:
            backend.shutdown()
    d50, r50 = statistics.median(direct), statistics.median(routed)
    print(json.dumps({"model": args.model, "rss_one_deployment_mb": round(one), "rss_two_deployments_mb": round(two),
                      "candidate_deploy_to_healthy_s": round(candidate_ready_s, 1),
                      "p50_direct_ms": round(d50, 1), "p50_through_router_ms": round(r50, 1)}, indent=2))
    print("\n| model | RSS, 1 deployment | RSS, 2 deployments | ratio | candidate deployed (s) | p50 direct | p50 via router | ratio |")
    print(f"| {args.model} | {one:.0f} MB | {two:.0f} MB | {two / one:.2f} | {candidate_ready_s:.1f} | {d50:.1f} ms | "
          f"{r50:.1f} ms | {r50 / d50:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
