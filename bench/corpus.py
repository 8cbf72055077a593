"""Benchmark: materialising a collection's corpus against plain concatenation of the same files.

    .venv/bin/python bench/corpus.py [--size-mb 300] [--datasets 20] [--overlap 0.05]

Builds (once, cached under .local/bench/) ``--datasets`` prepared datasets of about
``size-mb / datasets`` MB each: an ultrachat-shaped file (bench/prepare.py's generator) cut into
consecutive slices, each slice also repeating the first ``--overlap`` share of the next one
(cross-file duplicates, as re-exported conversations are), each prepared by
``shared.datasets.preparation.prepare_file`` into its train.jsonl / test.jsonl. Then, each in its
own subprocess so peak RSS is the run's own, over the same 2 x datasets files:

- ``concatenate`` (baseline): copy every train file into one train output and every test file
  into one test output, 1 MiB at a time (``shutil.copyfileobj``): what the corpus would cost if
  it were only a union of bytes;
- ``corpus``: ``shared.datasets.corpus.build_corpus``: parse each line, de-duplicate across files
  by the conversation digest, re-split by digest, write.

Prints MB/s (input bytes / wall time), rows, duplicates and peak RSS, and the ratios.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.prepare import GENERATOR_VERSION, generate  # noqa: E402

CORPUS_VERSION = 1


def _maxrss_mb() -> float:
    """This process's own peak RSS: VmHWM is per address space (ru_maxrss keeps the forking
    parent's peak across exec), falling back to ru_maxrss off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_datasets(cache: Path, size_mb: float, count: int, overlap: float) -> list[tuple[str, Path, Path]]:
    """``count`` prepared datasets (id, train, test), built once."""
    from shared.datasets.preparation import prepare_file
    from shared.settings import load_settings

    label = f"{size_mb:g}mb_{count}x_{overlap:g}".replace(".", "_")
    root = cache / f"corpus_{label}_v{GENERATOR_VERSION}_{CORPUS_VERSION}"
    done = root / "done"
    datasets = [(f"ds-{i:02d}", root / f"ds-{i:02d}" / "train.jsonl", root / f"ds-{i:02d}" / "test.jsonl") for i in range(count)]
    if done.exists():
        return datasets
    source = cache / f"ultrachat_like_corpus_{label}_v{GENERATOR_VERSION}.jsonl"
    if not source.exists():
        # the overlap adds ~overlap x size: generate a little less so the corpus' input is ~size_mb
        generate(source, size_mb / (1 + overlap))
    with open(source, "rb") as f:
        total = sum(1 for _ in f)
    per = total // count
    head = int(per * overlap)  # each slice repeats this many lines of the next one
    settings = load_settings(environ={"MIN_VALID_EXAMPLES": "1"})
    with tempfile.TemporaryDirectory(prefix="bench-corpus-", dir=cache) as tmp:
        raws = [Path(tmp) / f"{dataset_id}.jsonl" for dataset_id, _, _ in datasets]
        outs = [open(raw, "wb") for raw in raws]  # noqa: SIM115 - closed below
        first_lines: list[bytes] = []
        with open(source, "rb") as f:
            for number, line in enumerate(f):
                i = min(number // per, count - 1)
                outs[i].write(line)
                within = number - i * per
                if within < head:
                    (outs[i - 1].write(line) if i else first_lines.append(line))
        outs[-1].write(b"".join(first_lines))  # the last slice repeats the first one's head
        for out in outs:
            out.close()
        for (_dataset_id, train, _test), raw in zip(datasets, raws, strict=True):
            prepared = prepare_file(raw, train.parent, settings)
            assert prepared.accepted, prepared.report["decision"]
            raw.unlink()
    done.write_text("ok")
    return datasets


def worker(kind: str, manifest: Path, out_dir: Path) -> dict:
    datasets = json.loads(manifest.read_text())
    size = sum(Path(p).stat().st_size for _, train, test in datasets for p in (train, test))
    started, cpu = time.perf_counter(), time.process_time()
    if kind == "concatenate":
        with open(out_dir / "train.jsonl", "wb") as train_out, open(out_dir / "test.jsonl", "wb") as test_out:
            for _, train, test in datasets:
                for path, out in ((train, train_out), (test, test_out)):
                    with open(path, "rb") as f:
                        shutil.copyfileobj(f, out, 1 << 20)
        result = {"rows": None, "duplicates": 0}
    elif kind == "corpus":
        from shared.datasets.corpus import build_corpus

        def sources():
            for dataset_id, train, test in datasets:
                for path in (train, test):
                    with open(path, "rb", buffering=1 << 20) as f:
                        yield dataset_id, Path(path).name, f

        build = build_corpus(sources(), out_dir, 0.1)
        result = {"rows": build.rows, "duplicates": build.duplicates, "train": build.train, "test": build.test}
    else:
        raise SystemExit(f"unknown worker {kind}")
    result.update(elapsed_s=time.perf_counter() - started, cpu_s=time.process_time() - cpu, bytes=size)
    if result["rows"] is None:  # counted after the clock stopped
        result["rows"] = sum(1 for p in ("train.jsonl", "test.jsonl") for _ in open(out_dir / p, "rb"))  # noqa: SIM115
    return result


def run_worker(kind: str, manifest: Path, out_dir: Path) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, str(manifest), "--out-dir", str(out_dir)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"worker {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=float, default=300.0, help="total size of the prepared datasets (default 300)")
    p.add_argument("--datasets", type=int, default=20, help="number of datasets (default 20)")
    p.add_argument("--overlap", type=float, default=0.05, help="share of each dataset repeated from the next (default 0.05)")
    p.add_argument("--cache-dir", default=str(ROOT / ".local" / "bench"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("input", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        result = worker(args.worker, Path(args.input), Path(args.out_dir))
        result["maxrss_mb"] = _maxrss_mb()
        print(json.dumps(result))
        return 0

    cache = Path(args.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    datasets = make_datasets(cache, args.size_mb, args.datasets, args.overlap)
    print(f"{len(datasets)} prepared datasets ready in {time.perf_counter() - started:.1f} s")
    files = [p for _, train, test in datasets for p in (train, test)]
    size_mb = sum(p.stat().st_size for p in files) / 1e6
    for path in files:  # warm the page cache: both contenders read from memory
        with open(path, "rb") as f:
            while f.read(8 << 20):
                pass
    with tempfile.TemporaryDirectory(prefix="bench-corpus-run-", dir=cache) as tmp:
        manifest = Path(tmp) / "datasets.json"
        manifest.write_text(json.dumps([(d, str(t), str(s)) for d, t, s in datasets]))
        results = {}
        for kind in ("concatenate", "corpus"):
            out = Path(tmp) / kind
            out.mkdir()
            results[kind] = run_worker(kind, manifest, out)
            shutil.rmtree(out)
    print(f"\ninput: {len(files)} files of {len(datasets)} datasets, {size_mb:.1f} MB; python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs\n")
    base = results["concatenate"]
    print(f"{'contender':<13} {'seconds':>8} {'MB/s':>8} {'rows out':>9} {'duplicates':>10} {'peak RSS MB':>12} "
          f"{'x concat':>9} {'CPU s':>7}")
    for kind, r in results.items():
        rate = size_mb / r["elapsed_s"]
        print(f"{kind:<13} {r['elapsed_s']:>8.2f} {rate:>8.1f} {r['rows']:>9} {r['duplicates']:>10} {r['maxrss_mb']:>12.0f} "
              f"{rate / (size_mb / base['elapsed_s']):>9.2f} {r['cpu_s']:>7.2f}")
    corpus = results["corpus"]
    print(f"\ncorpus: {corpus['rows']} distinct conversations (train {corpus['train']}, test {corpus['test']}), "
          f"{corpus['duplicates']} cross-file duplicates dropped; concatenation kept {base['rows']} lines")
    print(f"corpus peak RSS {corpus['maxrss_mb']:.0f} MB vs concatenation {base['maxrss_mb']:.0f} MB "
          f"(+{corpus['maxrss_mb'] - base['maxrss_mb']:.0f} MB: interpreter imports and the digest index)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
