"""Black-box run of issue 26 on the local stack, through the app's own entry points.

    .venv/bin/python -m scripts.blackbox_trust [--keep]

In a copy of the project in a temporary folder (its own ``.local/``: no key, no stack of the
developer's is touched), with free ports and the tiny model, it runs what a user runs:
``python -m devhost.stack up`` / ``upload`` / ``down`` and HTTP calls to the local host, and
reads the ledger (the app's state, as ``status`` does). It prints one line per check and a
summary; the exit code is the number of failed checks.

1. ``make up`` with no ``FUNCTION_KEY`` prints a generated key; a request without it gets 401.
2. A cross-site POST (``Origin`` of another site) and a foreign ``Host`` are refused (403).
3. The review's 1.7 KB parquet (256 dictionary-encoded rows of 3 MiB) is rejected with its reason;
   the host's peak RSS (VmHWM) before and after, and preparation's own peak in a process of its own.
4. The same file in two collections trains (and deploys) in both.
5. A folder name that is not canonical (``Support_Bot/``) is refused with its reason.
6. Eight pinned old versions (``name:1`` .. ``name:8``, their endpoints deleted, as the janitor leaves
   them) start no endpoint: 404 ``version_not_deployed`` and the live endpoint count unchanged.
7. With ``MAX_LIVE_ENDPOINTS=2`` reached, a third collection's new model is not deployed: its
   record and ``status`` say why.
8. The quality gate finds each planted problem of tests/fakes/planted.py on its line (personal
   data, secrets, special tokens, the near-duplicate), policy ``redact`` for that collection.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from devhost.azurite import Azurite
from localworkspace.polling import wait_until
from localworkspace.ports import free_port
from scripts.make_sample_data import write, write_parquet_bomb
from scripts.project_clone import CloneStack, make_clone
from shared.settings import PROJECT_ROOT, load_settings

RESULTS: list[tuple[str, bool, str]] = []


def check(name: str, ok: bool, detail: str) -> bool:
    RESULTS.append((name, ok, detail))
    print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    return ok


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def prepare_peak_rss(path: Path, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """``shared.datasets.preparation.prepare_file`` on ``path`` in a process of its own: its decision and
    the process's peak RSS (VmHWM: ``ru_maxrss`` would carry this script's own peak across exec)."""
    code = ("import json, sys, tempfile\n"
            "from pathlib import Path\n"
            "from shared.datasets.preparation import prepare_file\n"
            "from shared.settings import load_settings\n"
            "with tempfile.TemporaryDirectory() as out:\n"
            "    p = prepare_file(Path(sys.argv[1]), Path(out), load_settings())\n"
            "hwm = next(line for line in open('/proc/self/status') if line.startswith('VmHWM:'))\n"
            "print(json.dumps({'accepted': p.accepted, 'maxrss_mib': int(hwm.split()[1]) / 1024}))\n")
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        return {"error": done.stderr[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def wait(what: str, predicate: Callable[[], Any], timeout_s: float, stack: CloneStack | None = None) -> Any:
    def step() -> Any:
        if stack is not None:
            stack.reconcile()
        return predicate()

    return wait_until(step, timeout_s, what, every_s=3.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary clone (its logs) after the run")
    args = parser.parse_args(argv)
    from shared.endpoints.naming import endpoint_name
    from shared.ledger import DATASET, ENDPOINT, MODEL, ROUTE, Ledger, iso, utcnow

    tmp = Path(tempfile.mkdtemp(prefix="blackbox-trust-"))
    clone = make_clone(tmp / "clone")
    az = Azurite(blob_port=free_port(), queue_port=free_port(), table_port=free_port())
    port = free_port()
    values = {
        "AzureWebJobsStorage": az.connection_string,
        "LOCAL_WORKSPACE_DIR": str(clone / ".local" / "workspace"),
        "LOCAL_MODEL_CACHE": str(PROJECT_ROOT / ".local" / "models"),  # the tiny model, built once per checkout
        "LOCAL_BASE_MODEL": "tiny-random",
        "TRAINING_MODE": "corpus",  # per collection: one model each (`<model name>-<collection>`)
        "COALESCE_SECONDS": "0",
        "FINETUNE_PARAMS": '{"max_steps": 2}',
        "RECONCILE_SCHEDULE": "0 0 0 1 1 *",  # this script runs reconcile on demand
        "JANITOR_SCHEDULE": "0 0 0 1 1 *",
        "MAX_LIVE_ENDPOINTS": "2",
        "EVAL_FLOORS": "{}",  # the tiny random model answers nothing: the first version's floors (issue 24) are not what this run checks
        "DATA_POLICY": '{"*": "report", "quality-bot": "redact"}',
        "LOCAL_HOST_PORT": str(port),
    }
    env = {**{k: v for k, v in os.environ.items() if k != "FUNCTION_KEY"}, **values,
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    stack = CloneStack(clone, env, port)
    settings = load_settings(environ=values)
    ledger = Ledger.from_settings(settings)
    print(f"clone {clone}; host {stack.url}; Azurite blob {az.blob_port}", flush=True)
    try:
        # 1. make up with no key
        up = stack.run("up")
        printed = up.stdout
        key = stack.key
        keyless = httpx.get(stack.url + "/api/v1/models", timeout=30).status_code
        keyed = httpx.get(stack.url + "/api/v1/models", headers={"x-functions-key": key}, timeout=30).status_code
        shown = next((line.strip() for line in printed.splitlines() if line.startswith("Function key:")), "")
        dashboard = next((line.strip() for line in printed.splitlines() if line.startswith("Dashboard:")), "")
        check("make up with no FUNCTION_KEY prints a generated key", key in shown and f"code={key}" in dashboard,
              f"'Function key: <{len(key)} characters>  ({shown.split('(', 1)[-1]}' and "
              f"'{dashboard.split('?')[0]}?code=<key>'; kept in .local/function_key, mode "
              f"{oct((clone / '.local' / 'function_key').stat().st_mode & 0o777)}")
        check("a request without the key gets 401", keyless == 401 and keyed == 200,
              f"GET /api/v1/models without the key {keyless}, with it {keyed}")

        # 2. cross-site POST and foreign Host
        cross = httpx.post(stack.url + "/admin/functions/delete_idle_endpoints", content=b"{}", timeout=30,
                           headers={"Origin": "https://evil.example", "Content-Type": "text/plain",
                                    "x-functions-key": key})
        foreign = httpx.get(stack.url + "/api/dashboard", params={"code": key}, headers={"Host": "evil.example"},
                            timeout=30)
        check("a cross-site POST is refused", cross.status_code == 403, f"{cross.status_code} {cross.json()['error'][:90]}")
        check("a foreign Host is refused", foreign.status_code == 403, f"{foreign.status_code} {foreign.json()['error'][:90]}")

        # 3. the parquet bomb
        bomb = write_parquet_bomb(tmp / "bomb.parquet")
        host_pid = stack.host_pid()
        before = vm_hwm_mib(host_pid)
        stack.run("upload", str(bomb), "--name", "support-bot/bomb.parquet")
        record = wait("the bomb's dataset record", lambda: next(
            (r for r in ledger.list(DATASET) if r.get("blob_name") == "support-bot/bomb.parquet"
             and r.state != "received"), None), 120)
        after = vm_hwm_mib(host_pid)
        alone = prepare_peak_rss(bomb, env, clone)
        check(f"the {bomb.stat().st_size / 1000:.1f} KB parquet is rejected with its reason",
              record.state == "rejected" and "MAX_EXPANSION_RATIO" in str(record.get("error")),
              f"{record.state}: {str(record.get('error'))[:160]}")
        check("peak RSS under 200 MB preparing it", alone.get("maxrss_mib", 1e9) < 200 and not alone.get("accepted"),
              f"prepare_file alone {alone.get('maxrss_mib', float('nan')):.0f} MiB peak; the host's VmHWM "
              f"{before:.0f} -> {after:.0f} MiB (+{after - before:.0f}: its own imports are the rest)")

        # 4. the same file in two collections
        sample = tmp / "batch-01.jsonl"
        write(sample, count=40, seed=3, malformed=0)
        for collection in ("support-bot", "sales-bot"):
            stack.run("upload", str(sample), "--name", f"{collection}/batch-01.jsonl")
        models = {c: f"{settings.model_name}-{c}" for c in ("support-bot", "sales-bot")}

        def both_serve() -> dict[str, Any] | None:
            routes = {c: ledger.get(ROUTE, m) for c, m in models.items()}
            return routes if all(routes.values()) else None

        routes = wait("both collections' models to serve", both_serve, 600, stack)
        answers = {c: httpx.post(stack.url + "/api/v1/chat/completions", timeout=60, headers={"x-functions-key": key},
                                 json={"model": m, "messages": [{"role": "user", "content": "Ahoy?"}], "max_tokens": 4}
                                 ).status_code for c, m in models.items()}
        datasets = sorted(r.id for r in ledger.list(DATASET) if str(r.get("blob_name")).endswith("/batch-01.jsonl"))
        served = ", ".join(f"{m} -> {routes[c].get('endpoint')}" for c, m in models.items())
        check("the same file in two collections trains in both",
              len(datasets) == 2 and all(s == 200 for s in answers.values()),
              f"datasets {datasets}; models {served}; chat answers {answers}")

        # 5. a folded folder name
        stack.run("upload", str(sample), "--name", "Support_Bot/batch-01.jsonl")
        folded = wait("the folded folder's dataset record", lambda: next(
            (r for r in ledger.list(DATASET) if r.get("blob_name") == "Support_Bot/batch-01.jsonl"
             and r.state != "received"), None), 120)
        check("a folded folder name is refused with its reason",
              folded.state == "rejected" and "not a collection name" in str(folded.get("error")),
              f"{folded.state}: {str(folded.get('error'))[:150]}")

        # 6. eight pinned old versions of a model whose endpoints the janitor deleted
        def live() -> list[str]:
            return sorted(r.id for r in ledger.list(ENDPOINT) if r.state in {"provisioning", "succeeded"})

        pinned = "pinned-demo"
        for version in range(1, 10):
            ref = f"{pinned}:{version}"
            ep = endpoint_name(pinned, str(version))
            ledger.create(MODEL, ref, "deployed", endpoint=ep, job_name=f"job-{version}", base_model="b")
            ledger.create(ENDPOINT, ep, "deleted", model=ref, model_name=pinned, model_version=str(version),
                          deleted_at=iso(utcnow()), delete_reason="idle")
        ledger.merge(ROUTE, pinned, "active", endpoint=endpoint_name(pinned, "9"), model_version="9")
        live_before = live()
        codes = []
        for version in range(1, 9):
            reply = httpx.post(stack.url + "/api/v1/chat/completions", timeout=60, headers={"x-functions-key": key},
                               json={"model": f"{pinned}:{version}", "messages": [{"role": "user", "content": "hi"}]})
            codes.append((reply.status_code, reply.json().get("error", {}).get("code")))
        live_after = live()
        check("eight pinned old versions start no endpoint (cap 2)",
              live_after == live_before and len(live_after) <= 2 and all(c == (404, "version_not_deployed") for c in codes),
              f"answers {sorted(set(codes))} x{len(codes)}; live endpoints before {len(live_before)}, after {len(live_after)}")

        # 7. the cap refuses a third collection's new model, saying why
        stack.run("upload", str(sample), "--name", "ops-bot/batch-01.jsonl")
        ops = f"{settings.model_name}-ops-bot:1"
        refused = wait("the third model's refusal", lambda: (r := ledger.get(MODEL, ops)) and r.get("deploy_refused_reason")
                       and r, 600, stack)
        status = subprocess.run([sys.executable, "-m", "shared.cli", "status"], cwd=clone, env=env, capture_output=True,
                                text=True, timeout=120).stdout
        check("a deployment past MAX_LIVE_ENDPOINTS is refused with a visible reason",
              len(live()) <= 2 and "would pass MAX_LIVE_ENDPOINTS=2" in status,
              f"{ops} {refused.state}: {str(refused.get('deploy_refused_reason'))[:170]}")

        # 8. the quality gate on a file with planted findings (tests/fakes/planted.py), policy redact
        import random

        from tests.fakes.planted import planted, write_jsonl

        rows, lines, _ = planted(random.Random(7))  # the seed tests/unit/test_quality.py uses
        path = write_jsonl(tmp / "planted.jsonl", rows)
        stack.run("upload", str(path), "--name", "quality-bot/planted.jsonl")
        dataset = wait("the planted file's dataset record", lambda: next(
            (r for r in ledger.list(DATASET) if r.get("blob_name") == "quality-bot/planted.jsonl"
             and r.state != "received"), None), 120)
        report = json.loads(subprocess.run([sys.executable, "-m", "shared.cli", "report", dataset.id, "--json"], cwd=clone,
                                           env=env, capture_output=True, text=True, timeout=120).stdout)
        quality = report["quality"]
        found = {kind: f["lines"] for kind, f in quality["findings"].items()}
        pairs = [(p["line"], p["like_line"]) for p in quality["near_duplicates"]["pairs"]]
        expected = {k: [v] for k, v in lines.items() if k not in {"near_duplicate", "leak"}}
        check("the gate finds each planted problem on its line (policy redact)",
              found == expected and pairs == [(lines["near_duplicate"], 3)] and quality["policy"] == "redact"
              and quality["redacted_conversations"] >= 6,
              f"counts {quality['counts']}; lines {found}; near-duplicate {pairs}; "
              f"{quality['redacted_conversations']} conversations redacted in the prepared copy")
    except Exception as exc:  # noqa: BLE001 - a failed stage is a failed check, reported with the others
        check("the run", False, f"{type(exc).__name__}: {str(exc)[:300]}")
    finally:
        subprocess.run([sys.executable, "-m", "devhost.stack", "down"], cwd=clone, env=env, capture_output=True, timeout=180)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    failed = [name for name, ok, _ in RESULTS if not ok]
    print(f"\n{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed"
          f"{'' if not failed else ': failed ' + '; '.join(failed)}; this process's peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    return len(failed)


if __name__ == "__main__":
    sys.exit(main())
