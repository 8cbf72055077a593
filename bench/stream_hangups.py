"""Benchmark: time to the next answer after N abandoned streams (issue 29), before and after.

    .venv/bin/python bench/stream_hangups.py [--counts 1 10 50] [--baseline REF] [--wait 120]

One run measures both sides on the real local stack (a tiny real fine-tune served by its
endpoint router and model server processes, the app in the local host, Azurite):

- ``after``: this checkout;
- ``before``: a git worktree of ``REF`` (default: the commit before the hang-up handling, i.e.
  the parent of the commit that added ``shared/scoring/hangup.py``), where this script is copied
  and run the same way, so the stack it starts (host, router, model server) is the old code.

For each N: N clients (5 at a time) send ``"stream": true`` with ``max_tokens`` 256, read the first
chunk and close the socket; then one plain request (``max_tokens`` 4) is timed until it answers
(at most ``--wait`` seconds: "no answer" past it). Before the next N, the model server is given up to
``--drain`` seconds to fall idle, so a round does not inherit the previous round's work. Also
printed: the host's connections to the endpoint still open 1 s after the hang-ups.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from shared.context import context

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CHAT = "/api/v1/chat/completions"
MODEL = "hangups-bench"
PARALLEL = 5
ABANDONED = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 256,
             "stream": True}
NEXT = {"model": MODEL, "messages": [{"role": "user", "content": "Ahoy?"}], "max_tokens": 4}
RESULT_PREFIX = "RESULT "


def hang_up(host_url: str, key: str) -> bool:
    parts = urlsplit(host_url)
    body = json.dumps(ABANDONED).encode()
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nx-functions-key: {key}\r\n\r\n").encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=60) as sock:
        sock.sendall(head + body)
        seen = b""
        while b"data:" not in seen:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            seen += chunk
        return seen.startswith(b"HTTP/1.1 200")


def measure(counts: list[int], wait_s: float, drain_s: float) -> dict[str, Any]:
    """Start the stack of this checkout, abandon N streams per count, time the next answer."""
    import httpx
    import psutil

    from devhost.azurite import free_port
    from devhost.host import run_host
    from localworkspace.workspace import read_pid_file
    from shared.backends import use_backend
    from shared.backends.base import COMPLETED, JOB_FINAL_STATES, MANAGED_BY_TAG, MANAGED_BY_VALUE, FineTuneRequest
    from shared.backends.local import LocalBackend
    from shared.endpoints import lifecycle
    from shared.ledger import MODEL as MODEL_KIND
    from shared.ledger import ROUTE, Ledger
    from shared.scoring.scorer import reset_scorers
    from shared.settings import use_settings
    from shared.storage import ensure_storage
    from tests.support import PrivateAzurite, make_settings, upload_prepared_dataset, wait_until

    root = Path(tempfile.mkdtemp(prefix="bench-hangups-"))
    storage = PrivateAzurite(root / "azurite")
    suffix = uuid.uuid4().hex[:8]
    settings = make_settings(
        AzureWebJobsStorage=storage.connection_string, CHAT_DATA_CONTAINER=f"chat-{suffix}",
        PREPARED_CONTAINER=f"prepared-{suffix}", LEDGER_TABLE=f"ledger{suffix}",
        LOCAL_WORKSPACE_DIR=str(root / "workspace"), LOCAL_BASE_MODEL="tiny-random",
        FINETUNE_PARAMS='{"max_steps": 2}', JANITOR_SCHEDULE="0 0 0 1 1 *", ACTIVITY_FLUSH_S="1",
        SCORING_MAX_STREAMS="64",  # (ignored before the change) this measures the abort, not the limit
        EVENTGRID_WEBHOOK_URL=f"http://127.0.0.1:{free_port()}/runtime/webhooks/eventgrid",
    )
    ensure_storage(settings)
    use_settings(settings)
    backend = LocalBackend(settings, event_retry_total_s=0)
    use_backend(backend, settings)
    ledger = Ledger.from_settings(settings)
    rows = []
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, True)
        stack.callback(storage.stop)
        stack.callback(backend.shutdown)
        stack.callback(reset_scorers)
        train, test = upload_prepared_dataset(settings, "hangups-bench", seed=11)
        job = backend.submit_finetune(FineTuneRequest("hangups-bench", train, test, MODEL,
                                                      tags={MANAGED_BY_TAG: MANAGED_BY_VALUE}))
        wait_until(lambda: backend.get_job(job).state in JOB_FINAL_STATES, 600, "the fine-tune", 2.0)
        assert backend.get_job(job).state == COMPLETED, backend.get_job(job).error
        model = backend.register_model(job, MODEL)
        ledger.create(MODEL_KIND, model.ref, "registered", job_name=job, base_model=model.base_model)
        ep = lifecycle.deploy_model(model, ctx=context(settings=settings, ledger=ledger, backend=backend), reason="bench").id
        host = stack.enter_context(run_host("function_app:app", settings=settings, port=0, poll_interval_s=1.0))
        client = stack.enter_context(httpx.Client(base_url=host.base_url, timeout=wait_s))
        wait_until(lambda: ledger.get(ROUTE, MODEL), 600, "the endpoint to serve")
        key = settings.function_key
        headers = {"x-functions-key": key}
        port = urlsplit(backend.get_scoring_target(ep).url).port
        servers = [psutil.Process(read_pid_file(p)["pid"])
                   for p in sorted(backend.ws.endpoint_dir(ep).glob("deployments/*/server.pid"))]

        def cpu() -> float:
            return sum(sum(p.cpu_times()[:2]) for p in servers)

        def idle_within(limit_s: float) -> float:
            started = time.monotonic()
            while time.monotonic() - started < limit_s:
                before = cpu()
                time.sleep(0.5)
                if cpu() - before < 0.05:
                    break
            return time.monotonic() - started

        def connections() -> int:
            return sum(1 for c in psutil.Process().net_connections(kind="tcp") if c.raddr and c.raddr.port == port)

        def timed_answer() -> float | None:
            started = time.perf_counter()
            try:
                reply = client.post(CHAT, json=NEXT, headers=headers)
            except httpx.TimeoutException:
                return None
            return time.perf_counter() - started if reply.status_code == 200 else None

        for _ in range(3):  # warm: the first answers load what a cold process loads
            timed_answer()
        usual = timed_answer()
        for n in counts:
            idle_within(drain_s)
            with ThreadPoolExecutor(PARALLEL) as pool:
                started = list(pool.map(lambda _: hang_up(host.base_url, key), range(n)))
            time.sleep(1.0)
            held = connections()
            rows.append({"n": n, "started": sum(started), "held_after_1s": held, "next_answer_s": timed_answer()})
            print(f"  N={n}: {rows[-1]}", file=sys.stderr, flush=True)
        idle_within(drain_s)
    return {"usual_s": usual, "rows": rows}


def baseline_ref() -> str:
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "-1", "--", "shared/scoring/hangup.py"],
                           cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    if not added:
        raise SystemExit("cannot find the commit that added shared/scoring/hangup.py: pass --baseline REF")
    return f"{added}^"


def run_side(checkout: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(checkout / "bench" / "stream_hangups.py"), "--measure", "--counts",
           *map(str, args.counts), "--wait", str(args.wait), "--drain", str(args.drain)]
    out = subprocess.run(cmd, cwd=checkout, stdout=subprocess.PIPE, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith(RESULT_PREFIX))
    return json.loads(line[len(RESULT_PREFIX):])


def with_baseline_checkout(ref: str) -> contextlib.AbstractContextManager[Path]:
    @contextlib.contextmanager
    def checkout() -> Any:
        where = Path(tempfile.mkdtemp(prefix="bench-hangups-before-")) / "repo"
        subprocess.run(["git", "worktree", "add", "--detach", str(where), ref], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL)
        try:
            for shared in ("node_modules", ".local"):  # Azurite and the model caches of this checkout
                if (ROOT / shared).exists() and not (where / shared).exists():
                    os.symlink(ROOT / shared, where / shared)
            shutil.copy(Path(__file__), where / "bench" / "stream_hangups.py")
            yield where
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, check=False)
            shutil.rmtree(where.parent, ignore_errors=True)

    return checkout()


def show(seconds: float | None, wait_s: float) -> str:
    return f"{seconds:.2f} s" if seconds is not None else f"none in {wait_s:.0f} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--baseline", default=None, help="git ref of the 'before' code (default: see above)")
    parser.add_argument("--wait", type=float, default=120.0, help="longest wait for the next answer (s)")
    parser.add_argument("--drain", type=float, default=180.0, help="longest wait for the model server to fall idle (s)")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"),
                        ("TOKENIZERS_PARALLELISM", "false"), ("HF_HOME", str(ROOT / ".local" / "hf"))):
        os.environ.setdefault(name, value)
    if args.measure:
        print(RESULT_PREFIX + json.dumps(measure(args.counts, args.wait, args.drain)), flush=True)
        return 0

    ref = args.baseline or baseline_ref()
    print(f"after: this checkout; before: {ref}", file=sys.stderr, flush=True)
    print("after ...", file=sys.stderr, flush=True)
    after = run_side(ROOT, args)
    print("before ...", file=sys.stderr, flush=True)
    with with_baseline_checkout(ref) as old:
        before = run_side(old, args)
    print(f"\nTime to the next answer (max_tokens 4) after N streams abandoned after their first chunk "
          f"(max_tokens 256, {PARALLEL} at a time); tiny model, local stack")
    print(f"usual answer: before {show(before['usual_s'], args.wait)}, after {show(after['usual_s'], args.wait)}")
    print(f"{'N':>4} | {'before':>14} | {'after':>10} | {'ratio':>7} | host->endpoint connections 1 s later (before/after)")
    for b, a in zip(before["rows"], after["rows"], strict=True):
        ratio = (f"{b['next_answer_s'] / a['next_answer_s']:.0f}x"
                 if b["next_answer_s"] is not None and a["next_answer_s"] else "n/a")
        if b["next_answer_s"] is None and a["next_answer_s"]:
            ratio = f">{args.wait / a['next_answer_s']:.0f}x"
        print(f"{b['n']:>4} | {show(b['next_answer_s'], args.wait):>14} | {show(a['next_answer_s'], args.wait):>10} | "
              f"{ratio:>7} | {b['held_after_1s']} / {a['held_after_1s']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
