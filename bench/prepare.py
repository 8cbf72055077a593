"""Benchmark: chat data preparation against the raw parse and the cookbook's pandas way.

    .venv/bin/python bench/prepare.py [--size-mb 300] [--skip-pandas]

Generates (once, cached under .local/bench/) an ultrachat_200k-shaped JSONL file of the given
size (multi-turn conversations of about 7 KB), then measures, each in its own subprocess so
peak RSS is the run's own:

- ``prepare``: ``shared.datasets.preparation.prepare_file`` (validate, normalise, de-duplicate, split, write)
  with the data quality gate (issue 26: personal data, secrets, special tokens, MinHash LSH
  near-duplicates, cost forecast), as the app runs it
- ``prepare, no gate``: the same without the gate (``quality_gate=False``), to show what the gate costs
- ``raw orjson``: ``for line in file: orjson.loads(line)`` over the same file (the ceiling)
- ``pandas``: ``pandas.read_json(path, lines=True)`` (what the cookbook notebook does)

Targets (issues 3 and 26): preparation (with the gate) at least 0.5 x the raw parse rate; peak
RSS under 200 MB.

Besides wall-clock rates, each worker reports its CPU time (``time.process_time``: every thread of
the process) and the preparation its main thread's alone (``time.thread_time``; the content
SHA-256 runs on a helper thread). On a shared machine wall-clock swings with other jobs; the CPU
ratios (raw parse CPU time / preparation CPU time, same file, same run) do much less.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (make bench): make the project importable
    sys.path.insert(0, str(ROOT))

GENERATOR_VERSION = 2
TARGET_RATIO = 0.5
TARGET_RSS_MB = 200.0

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an they "
    "you were her she there been one all we their has would when if so no will more can out some time only into "
    "model data training learning language system answer question example result process value important "
    "different between because however therefore although example include provide approach method research "
    "information development community environment experience government education economic social health "
    "technology history culture science important analysis strategy solution recipe garden travel music story"
).split()
# Chat data is mostly ASCII with some typography and names; a few sentences carry these.
_NON_ASCII = "café naïve résumé Zürich São München — “quoted” ‘single’ … 東京 数据 🙂".split()
_USER_OPENERS = ("Can you explain", "Write a short essay about", "What are the main differences between",
                 "Summarize the following text:", "Give me a step-by-step guide to", "Why does",
                 "Please rewrite this paragraph:", "How would you describe", "List five facts about")


def _sentence_pool(rng: random.Random, n: int) -> list[str]:
    pool = []
    for _ in range(n):
        words = rng.choices(_WORDS, k=rng.randint(8, 26))
        words[0] = words[0].capitalize()
        if rng.random() < 0.04:
            words[rng.randrange(len(words))] = rng.choice(_NON_ASCII)
        text = " ".join(words)
        if rng.random() < 0.15:
            text += ",\n" + " ".join(rng.choices(_WORDS, k=rng.randint(4, 12)))
        pool.append(text + rng.choice((".", ".", ".", "?", "!", ":")))
    return pool


def generate(path: Path, size_mb: float, seed: int = 1) -> None:
    """Write an ultrachat-shaped file of at least ``size_mb`` MB (1 MB = 10**6 bytes), ~7 KB per row."""
    import orjson

    rng = random.Random(seed)
    pool = _sentence_pool(rng, 6000)
    target = int(size_mb * 1_000_000)
    written = 0
    row = 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb", buffering=1 << 20) as f:
        while written < target:
            row += 1
            messages = []
            if rng.random() < 0.1:
                messages.append({"content": "You are a helpful assistant. " + " ".join(rng.choices(pool, k=2)), "role": "system"})
            for turn in range(rng.randint(3, 7)):
                user = " ".join(rng.choices(pool, k=rng.randint(1, 4)))
                if turn == 0:
                    user = f"{rng.choice(_USER_OPENERS)} {user}"
                messages.append({"content": user, "role": "user"})
                messages.append({"content": " ".join(rng.choices(pool, k=rng.randint(5, 14))), "role": "assistant"})
            prompt = next(m["content"] for m in messages if m["role"] == "user")
            line = orjson.dumps({"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(),
                                 "messages": messages}) + b"\n"
            f.write(line)
            written += len(line)
    tmp.replace(path)


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# ---------------------------------------------------------------- workers (run in subprocesses)


def worker(kind: str, path: Path, out_dir: Path | None) -> dict:
    if kind == "baseline":
        import orjson  # noqa: F401

        from shared.datasets import preparation  # noqa: F401

        return {"elapsed_s": 0.0, "rows": 0}
    if kind == "raw":
        import orjson

        loads = orjson.loads
        rows = 0
        cpu, started = time.process_time(), time.perf_counter()
        with open(path, "rb", buffering=1 << 20) as f:
            for line in f:
                loads(line)
                rows += 1
        return {"elapsed_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu, "rows": rows}
    if kind in ("prepare", "prepare-nogate"):
        from shared.datasets.preparation import prepare_file
        from shared.settings import load_settings

        settings = load_settings(environ={})
        assert out_dir is not None
        cpu, main_cpu, started = time.process_time(), time.thread_time(), time.perf_counter()
        prepared = prepare_file(path, out_dir, settings, quality_gate=kind == "prepare")
        elapsed = time.perf_counter() - started
        return {"elapsed_s": elapsed, "cpu_s": time.process_time() - cpu, "main_thread_cpu_s": time.thread_time() - main_cpu,
                "rows": prepared.counts["lines"], "counts": prepared.counts, "accepted": prepared.accepted,
                "quality": (prepared.report.get("quality") or {}).get("counts")}
    if kind == "pandas":
        import pandas as pd

        cpu, started = time.process_time(), time.perf_counter()
        frame = pd.read_json(path, lines=True)
        return {"elapsed_s": time.perf_counter() - started, "cpu_s": time.process_time() - cpu, "rows": len(frame)}
    raise SystemExit(f"unknown worker {kind}")


def run_worker(kind: str, path: Path, out_dir: Path | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(path)]
    if out_dir is not None:
        cmd += ["--out-dir", str(out_dir)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=float, default=300.0, help="size of the generated file (default 300)")
    p.add_argument("--cache-dir", default=str(ROOT / ".local" / "bench"), help="where the generated file is kept")
    p.add_argument("--skip-pandas", action="store_true", help="skip pandas.read_json (slow, GBs of memory)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("input", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        result = worker(args.worker, Path(args.input), Path(args.out_dir) if args.out_dir else None)
        result["maxrss_mb"] = _maxrss_mb()
        print(json.dumps(result))
        return 0

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    size_label = f"{args.size_mb:g}".replace(".", "_")
    data = cache / f"ultrachat_like_{size_label}mb_v{GENERATOR_VERSION}.jsonl"
    if not data.exists():
        started = time.perf_counter()
        generate(data, args.size_mb)
        print(f"generated {data} ({data.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    size = data.stat().st_size
    size_mb = size / 1e6
    with open(data, "rb") as f:  # warm the page cache so every contender reads from memory
        while f.read(8 << 20):
            pass

    results: dict[str, dict] = {}
    results["baseline"] = run_worker("baseline", data)
    results["raw orjson"] = run_worker("raw", data)
    with tempfile.TemporaryDirectory(prefix="bench-prepare-", dir=cache) as out:
        results["prepare"] = run_worker("prepare", data, Path(out))
    with tempfile.TemporaryDirectory(prefix="bench-prepare-", dir=cache) as out:
        results["prepare, no gate"] = run_worker("prepare-nogate", data, Path(out))
    if not args.skip_pandas:
        results["pandas.read_json"] = run_worker("pandas", data)

    rows = results["raw orjson"]["rows"]
    print(f"\ninput: {data.name}: {size_mb:.1f} MB, {rows} rows, {size / max(rows, 1) / 1000:.1f} KB per row")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; interpreter + imports alone: "
          f"{results['baseline']['maxrss_mb']:.0f} MB RSS\n")
    raw_rate = size_mb / results["raw orjson"]["elapsed_s"]
    raw_cpu = results["raw orjson"]["cpu_s"]
    print(f"{'contender':<18} {'seconds':>8} {'MB/s':>8} {'rows/s':>9} {'peak RSS MB':>12} {'x raw':>7} "
          f"{'CPU s':>7} {'CPU us/row':>11} {'x raw CPU':>10}")
    for name in ("raw orjson", "prepare", "prepare, no gate", "pandas.read_json"):
        if name not in results:
            continue
        r = results[name]
        rate = size_mb / r["elapsed_s"]
        print(f"{name:<18} {r['elapsed_s']:>8.2f} {rate:>8.1f} {r['rows'] / r['elapsed_s']:>9.0f} "
              f"{r['maxrss_mb']:>12.0f} {rate / raw_rate:>7.2f} {r['cpu_s']:>7.2f} "
              f"{r['cpu_s'] / max(r['rows'], 1) * 1e6:>11.1f} {raw_cpu / r['cpu_s']:>10.2f}")
    prep = results["prepare"]
    ratio = (size_mb / prep["elapsed_s"]) / raw_rate
    nogate = results["prepare, no gate"]
    print(f"\nprepare counts: {prep['counts']}")
    print(f"quality gate counts: {prep['quality']}")
    print(f"the gate's cost: prepare with it runs at {nogate['elapsed_s'] / prep['elapsed_s']:.2f} x the rate without it "
          f"({prep['elapsed_s']:.2f} s vs {nogate['elapsed_s']:.2f} s; peak RSS {prep['maxrss_mb']:.0f} MB vs {nogate['maxrss_mb']:.0f} MB)")
    print(f"prepare CPU: {prep['cpu_s']:.2f} s in all threads ({raw_cpu / prep['cpu_s']:.2f} x raw), "
          f"{prep['main_thread_cpu_s']:.2f} s in the main thread ({raw_cpu / prep['main_thread_cpu_s']:.2f} x raw; "
          f"the rest is mostly the content SHA-256 on its helper thread)")
    print(f"target throughput >= {TARGET_RATIO} x raw: {ratio:.2f} x wall-clock -> {'MET' if ratio >= TARGET_RATIO else 'NOT MET'}")
    print(f"target peak RSS < {TARGET_RSS_MB:.0f} MB: {prep['maxrss_mb']:.0f} MB -> "
          f"{'MET' if prep['maxrss_mb'] < TARGET_RSS_MB else 'NOT MET'}")
    if "pandas.read_json" in results:
        pd_r = results["pandas.read_json"]
        print(f"prepare vs pandas: {pd_r['elapsed_s'] / prep['elapsed_s']:.1f} x faster, "
              f"{pd_r['maxrss_mb'] / prep['maxrss_mb']:.1f} x less memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
