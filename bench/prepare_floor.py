"""Benchmark: the floor of a preparation in CPython, step by step, against the raw parse (issue 26).

    .venv/bin/python bench/prepare_floor.py [--size-mb 30]

On the same ultrachat-shaped file as ``bench/prepare.py`` (generated once under .local/bench/),
each line adds one step that every prepared row needs, cumulatively, and prints its CPU time per
row (``time.process_time``, best of three, the file already in memory) and the raw parse rate
over it (``raw / cumulative``: 0.50 is the issue's target for the whole preparation with its gate):

1. ``orjson.loads`` of the line (the baseline of ``bench/prepare.py``);
2. the least schema check there is (each message a dict with a string role and content);
3. the conversation digest the de-duplication and the split need (``conversation_digest``:
   canonical JSON, xxh3-128);
4. the personal data / secrets prefilter of the gate (``may_hold_sensitive`` on those bytes);
5. the near-duplicate MinHash (``shingle_text``, then ``signature_matrix`` per 256 rows, as the gate
   batches it; no LSH look-up).

The content SHA-256 of the upload (its identity) is printed on its own: the app runs it on a helper
thread. What the steps leave out, and preparation does, costs more on top: normalisation, the
statistics, the error paths, writing the prepared file and the report.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make the project importable
    sys.path.insert(0, str(ROOT))

from bench.prepare import GENERATOR_VERSION, generate  # noqa: E402

BATCH = 256  # the gate's MinHash batch (shared.datasets.quality)


def best_cpu_s(f: Callable[[], None], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        f()
        best = min(best, time.process_time() - started)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=float, default=30.0, help="size of the generated file (default 30)")
    p.add_argument("--cache-dir", default=str(ROOT / ".local" / "bench"), help="where the generated file is kept")
    args = p.parse_args(argv)

    import orjson

    from shared.datasets.digest import conversation_digest
    from shared.datasets.neardup import shingle_text, signature_matrix
    from shared.datasets.sensitive import may_hold_sensitive

    size_label = f"{args.size_mb:g}".replace(".", "_")  # the same file name as bench/prepare.py's
    path = Path(args.cache_dir) / f"ultrachat_like_{size_label}mb_v{GENERATOR_VERSION}.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        generate(path, args.size_mb)
    lines = path.read_bytes().splitlines()
    rows = len(lines)
    loads = orjson.loads

    def parse() -> None:
        for line in lines:
            loads(line)

    def checked() -> list[tuple[list[str], list[str]]]:
        out = []
        for line in lines:
            roles, contents = [], []
            for m in loads(line)["messages"]:
                role, content = m.get("role"), m.get("content")
                if type(role) is not str or type(content) is not str:
                    raise ValueError("not a chat row")
                roles.append(role)
                contents.append(content)
            out.append((roles, contents))
        return out

    def digested() -> None:
        for roles, contents in checked():
            conversation_digest(roles, contents)

    def prefiltered() -> None:
        for roles, contents in checked():
            conversation_digest(roles, contents)
            may_hold_sensitive(orjson.dumps(contents))

    def minhashed() -> None:
        batch = []
        for roles, contents in checked():
            conversation_digest(roles, contents)
            may_hold_sensitive(orjson.dumps(contents))
            batch.append(shingle_text(contents))
            if len(batch) == BATCH:
                signature_matrix(batch)
                batch = []
        if batch:
            signature_matrix(batch)

    def sha256() -> None:
        for line in lines:
            hashlib.sha256(line).digest()

    print(f"{rows} rows of {sum(map(len, lines)) // rows} bytes on average ({path.name})")
    raw = best_cpu_s(parse) / rows
    steps = [("2. + the least schema check", checked), ("3. + conversation digest (canonical JSON, xxh3)", digested),
             ("4. + personal data / secrets prefilter", prefiltered), ("5. + MinHash signatures (batched numpy)", minhashed)]
    print(f"{'step (cumulative)':52s} {'CPU us/row':>10s} {'raw / this':>10s}")
    print(f"{'1. orjson.loads (the raw parse, the baseline)':52s} {raw * 1e6:10.1f} {1.0:10.2f}")
    for name, f in steps:
        cost = best_cpu_s(f) / rows
        print(f"{name:52s} {cost * 1e6:10.1f} {raw / cost:10.2f}")
    print(f"{'content SHA-256 of the line (a helper thread in the app)':52s} {best_cpu_s(sha256) / rows * 1e6:10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
