"""Benchmark: latency the scoring function adds over calling the endpoint directly.

    .venv/bin/python bench/scoring.py [--requests 1500] [--rounds 3] [--concurrency 1 16]

In one run, against one fast stub endpoint speaking Azure ML's contract (tests/stub_endpoint.py,
its own process, answers at once), it measures:

- ``direct``: ``POST <stub>/score`` with the cookbook body and ``Authorization: Bearer <key>``,
  which is what a client would do if it knew the endpoint's URI and key;
- ``function``: ``POST /api/score`` with the same body and the function key, served by the
  project's local Functions host (devhost, its own process: real HTTP, real function key check,
  the real ``score`` function with the ledger in Azurite and the route/target/connection caches
  a warm worker has).

Each at concurrency 1 and 16 (one keep-alive ``httpx.Client`` per client thread), in alternating
rounds so drift on the machine hits both paths alike. Added latency = function - direct, at p50
and p99; throughput = completed requests / wall time. Targets (issue 7): p50 overhead < 2 ms,
p99 overhead < 10 ms.

The host serves only the scoring blueprint (no blob polling or timers competing for the CPU),
and the load generator, host and stub share the same machine's cores.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (make bench): make the project importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402

from localworkspace.ports import free_port, port_open  # noqa: E402

TARGET_P50_MS = 2.0
TARGET_P99_MS = 10.0
MODEL_NAME = "bench-ft"
ENDPOINT_KEY = "bench-endpoint-key"
FUNCTION_KEY = "bench-function-key"
BODY = orjson.dumps(
    {
        "input_data": {
            "input_string": [
                {"role": "system", "content": "You are a helpful assistant who answers briefly."},
                {"role": "user", "content": "What is the capital of France, and why is it famous?"},
            ],
            "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 64},
        },
        "params": {},
    }
)




def _wait_listening(port: int, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if port_open(port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout_s:.0f}s")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


# ---- the host process (child mode)


class FixedTargetBackend:
    """The only backend call scoring makes on its hot path: where the endpoint is and its key."""

    name = "bench"

    def __init__(self, url: str, key: str):
        self.url, self.key = url, key

    @property
    def workspace_id(self) -> str:
        return "bench"

    def get_scoring_target(self, endpoint_name: str, refresh: bool = False) -> Any:
        from shared.backends.base import ScoringTarget

        return ScoringTarget(url=f"{self.url}/score", key=self.key, timeout_s=90.0, deployment="demo")


def serve_host(port: int, stub_url: str, host_as_is: bool) -> int:
    import logging

    import azure.functions as func

    from devhost.host import run_host
    from functions import scoring as scoring_functions
    from shared.backends import use_backend
    from shared.settings import load_settings, use_settings

    logging.basicConfig(level=logging.WARNING)
    settings = load_settings(environ=dict(os.environ))
    use_settings(settings)
    use_backend(FixedTargetBackend(stub_url, ENDPOINT_KEY), settings)  # type: ignore[arg-type]
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(scoring_functions.bp)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    on_start = None if host_as_is else _listen_with_tcp_nodelay
    with run_host(app, settings=settings, port=port, poll_interval_s=3600, on_start=on_start):
        stop.wait()
    return 0


def _listen_with_tcp_nodelay(host: Any) -> None:
    """Work around a local-host socket detail that is not the function's cost.

    A listening socket made as ``socket(AF_INET, SOCK_STREAM)`` has proto 0, so asyncio does not
    set TCP_NODELAY on the connections it accepts; uvicorn writes a response's headers and body
    separately, and the body then waits ~40 ms for the client's delayed ACK. Linux copies
    TCP_NODELAY from the listening socket to accepted ones, so setting it here removes that.
    """
    sock = host._socket
    if sock is not None and sock.proto != socket.IPPROTO_TCP and not sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        print("bench: set TCP_NODELAY on the local host's listening socket (see --host-as-is)", file=sys.stderr, flush=True)


# ---- load generation


def run_load(url: str, headers: dict[str, str], requests: int, concurrency: int) -> tuple[list[float], float]:
    """``requests`` POSTs spread over ``concurrency`` threads; per-request latencies (s) and wall time."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    remaining = [requests]
    clients = [httpx.Client(headers=headers, timeout=30.0) for _ in range(concurrency)]
    for client in clients:  # open the keep-alive connections before timing
        client.post(url, content=BODY).raise_for_status()

    def worker(client: httpx.Client) -> None:
        mine: list[float] = []
        while True:
            with lock:
                if remaining[0] <= 0:
                    break
                remaining[0] -= 1
            started = time.perf_counter()
            response = client.post(url, content=BODY)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                with lock:
                    errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                break
            mine.append(elapsed)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    for client in clients:
        client.close()
    if errors:
        raise RuntimeError(f"{len(errors)} request(s) failed, first: {errors[0]}")
    return latencies, wall


def _cpu_s(process: Any) -> float:
    times = process.cpu_times()
    return times.user + times.system


def measure_in_process(settings: Any, stub_url: str, requests: int) -> dict[str, tuple[float, float, float]]:
    """The function's own cost, without the HTTP hop into the host: ``shared.scoring.score(body)``
    in this process vs a direct POST from this process (p50 ms, p99 ms, CPU ms per call).

    Two direct baselines: ``httpx`` (the load generator's client) and ``urllib3`` (the client the
    function itself uses upstream), so that "added" over the latter is the function's own work
    and not a difference between HTTP clients."""
    import urllib3

    from shared.backends import use_backend
    from shared.scoring import scorer as scoring
    from shared.settings import use_settings

    use_settings(settings)
    use_backend(FixedTargetBackend(stub_url, ENDPOINT_KEY), settings)  # type: ignore[arg-type]
    client = httpx.Client(headers={"Authorization": f"Bearer {ENDPOINT_KEY}", "Content-Type": "application/json"})
    pool = urllib3.connection_from_url(stub_url, maxsize=1, retries=False)
    pool_headers = {"Authorization": f"Bearer {ENDPOINT_KEY}", "Content-Type": "application/json"}

    def direct_urllib3() -> None:
        response = pool.urlopen("POST", "/score", body=BODY, headers=pool_headers, preload_content=True)
        if response.status != 200:
            raise RuntimeError(f"direct urllib3 POST answered HTTP {response.status}")

    calls = {
        "direct": lambda: client.post(f"{stub_url}/score", content=BODY).raise_for_status(),
        "direct urllib3": direct_urllib3,
        "score()": lambda: scoring.score(BODY),
    }
    samples: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in calls}
    try:
        for call in calls.values():  # warm: connections, first ledger read
            for _ in range(100):
                call()
        for _ in range(5):  # alternate in blocks so drift hits both alike
            for name, call in calls.items():
                lat, cpu = samples[name]
                cpu_started = time.process_time()
                for _ in range(requests // 5):
                    started = time.perf_counter()
                    call()
                    lat.append(time.perf_counter() - started)
                samples[name] = (lat, cpu + time.process_time() - cpu_started)
    finally:
        client.close()
        pool.close()
        scoring.reset_scorers()
    return {
        name: (percentile(lat, 0.5) * 1000, percentile(lat, 0.99) * 1000, cpu / len(lat) * 1000)
        for name, (lat, cpu) in samples.items()
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return statistics.quantiles(ordered, n=1000, method="inclusive")[int(q * 1000) - 1] if len(ordered) > 1 else ordered[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500, help="requests per path and concurrency per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument(
        "--host-as-is",
        action="store_true",
        help="do not set TCP_NODELAY on the local host's listening socket (measures the host as shipped)",
    )
    parser.add_argument("--serve-host", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stub-url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_host is not None:
        return serve_host(args.serve_host, args.stub_url, args.host_as_is)

    from devhost.azurite import Azurite, start, stop_process
    from shared.ledger import Ledger
    from shared.settings import load_settings
    from shared.storage import ensure_storage
    from tests.stub_endpoint import seed_model

    suffix = uuid.uuid4().hex[:8]
    azurite = Azurite(blob_port=free_port(), queue_port=free_port(), table_port=free_port())
    env = {
        "AzureWebJobsStorage": azurite.connection_string,
        "LEDGER_TABLE": f"benchledger{suffix}",
        "CHAT_DATA_CONTAINER": f"bench-chat-{suffix}",
        "PREPARED_CONTAINER": f"bench-prepared-{suffix}",
        "FINETUNED_MODEL_NAME": MODEL_NAME,
        "FUNCTION_KEY": FUNCTION_KEY,
    }
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    stub_port, host_port = free_port(), free_port()
    azurite_proc = stub = host = None
    with tempfile.TemporaryDirectory(prefix="bench-scoring-") as tmp:
        try:
            azurite_proc = start(azurite, Path(tmp) / "azurite")
            settings = load_settings(environ=env)
            ensure_storage(settings)
            seed_model(Ledger.from_settings(settings), MODEL_NAME, "1")
            stub = subprocess.Popen(
                [sys.executable, "-m", "tests.stub_endpoint", "--port", str(stub_port), "--key", ENDPOINT_KEY],
                cwd=ROOT,
                env=child_env,
            )
            host = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--serve-host",
                    str(host_port),
                    "--stub-url",
                    f"http://127.0.0.1:{stub_port}",
                    *(["--host-as-is"] if args.host_as_is else []),
                ],
                cwd=ROOT,
                env=child_env,
            )
            _wait_listening(stub_port, stub, "stub endpoint")
            _wait_listening(host_port, host, "local host")
            paths = {
                "direct": (
                    f"http://127.0.0.1:{stub_port}/score",
                    {"Authorization": f"Bearer {ENDPOINT_KEY}", "Content-Type": "application/json"},
                ),
                "function": (
                    f"http://127.0.0.1:{host_port}/api/score",
                    {"x-functions-key": FUNCTION_KEY, "Content-Type": "application/json"},
                ),
            }
            for url, headers in paths.values():  # warm up both servers (imports, first ledger read)
                run_load(url, headers, 200, 2)
            import psutil

            servers = [psutil.Process(stub.pid), psutil.Process(host.pid)]
            results: dict[tuple[int, str], tuple[list[float], float, float]] = {}
            for concurrency in args.concurrency:
                for _ in range(args.rounds):
                    for name, (url, headers) in paths.items():
                        cpu_before = sum(_cpu_s(p) for p in servers)
                        lat, wall = run_load(url, headers, args.requests, concurrency)
                        cpu = sum(_cpu_s(p) for p in servers) - cpu_before
                        prev_lat, prev_wall, prev_cpu = results.get((concurrency, name), ([], 0.0, 0.0))
                        results[(concurrency, name)] = (prev_lat + lat, prev_wall + wall, prev_cpu + cpu)
            in_process = measure_in_process(settings, f"http://127.0.0.1:{stub_port}", args.requests * args.rounds)
        finally:
            _stop(host)
            _stop(stub)
            if azurite_proc is not None:
                stop_process(azurite_proc.pid)

    print(
        "\nserver CPU = CPU time of the stub (direct) or stub + local host (function) per request; "
        "'added' CPU is what the host and the function spend per call"
    )
    print(
        f"\nscoring overhead: {args.rounds} rounds x {args.requests} requests per path and concurrency "
        f"(function path: devhost HTTP server; {os.cpu_count()} CPUs shared by client, host and stub)\n"
    )
    header = (
        f"{'conc':>4}  {'path':<9} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'req/s':>8}"
        f" {'server CPU ms/req':>18}"
    )
    print(header)
    print("-" * len(header))
    verdicts = []
    for concurrency in args.concurrency:
        row = {}
        for name in ("direct", "function"):
            lat, wall, cpu = results[(concurrency, name)]
            row[name] = (percentile(lat, 0.50) * 1000, percentile(lat, 0.99) * 1000, cpu / len(lat) * 1000)
            print(
                f"{concurrency:>4}  {name:<9} {len(lat):>8} {row[name][0]:>8.2f} {row[name][1]:>8.2f} "
                f"{statistics.fmean(lat) * 1000:>8.2f} {len(lat) / wall:>8.0f} {row[name][2]:>18.2f}"
            )
        added_p50 = row["function"][0] - row["direct"][0]
        added_p99 = row["function"][1] - row["direct"][1]
        added_cpu = row["function"][2] - row["direct"][2]
        print(f"{concurrency:>4}  {'added':<9} {'':>8} {added_p50:>+8.2f} {added_p99:>+8.2f} {'':>8} {'':>8} {added_cpu:>+18.2f}")
        verdicts.append((concurrency, added_p50, added_p99))
    print("\nthe function alone, in process (no HTTP hop into the host), concurrency 1:")
    print(f"{'':>4}  {'path':<15} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/call':>12}")
    for name, (p50, p99, cpu) in in_process.items():
        print(f"{'':>4}  {name:<15} {p50:>8.3f} {p99:>8.3f} {cpu:>12.3f}")
    f = in_process["score()"]
    for label, base in (("vs httpx", "direct"), ("vs urllib3", "direct urllib3")):
        d = in_process[base]
        print(f"{'':>4}  {'added ' + label:<15} {f[0] - d[0]:>+8.3f} {f[1] - d[1]:>+8.3f} {f[2] - d[2]:>+12.3f}")
    print()
    for concurrency, added_p50, added_p99 in verdicts:
        ok = added_p50 < TARGET_P50_MS and added_p99 < TARGET_P99_MS
        print(
            f"concurrency {concurrency}: added p50 {added_p50:.2f} ms (target < {TARGET_P50_MS:g}), "
            f"added p99 {added_p99:.2f} ms (target < {TARGET_P99_MS:g}): {'met' if ok else 'NOT met'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
