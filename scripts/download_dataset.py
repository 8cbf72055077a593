"""Download chat data with `datasets` and write it as JSONL (the cookbook's download-dataset.py, done properly).

    .venv/bin/python -m scripts.download_dataset --dataset HuggingFaceH4/ultrachat_200k \\
        --dataset_split_pc 5 --out-dir data/ultrachat [--upload]

For each split (default ``train_sft`` and ``test_sft``) it loads the first ``--dataset_split_pc``
percent (``split="train_sft[:5%]"``), streams the rows to ``<out-dir>/<split>.jsonl`` in the
ultrachat_200k schema (``prompt``, ``prompt_id``, ``messages``) and, with ``--upload``, uploads
the training split to the chat-data container, where the ``prepare_chat_data`` trigger
prepares it (it makes its own train/test split, so only one file is uploaded).

``--dataset`` may also be a local folder (a dataset repository layout such as
``data/train_sft-00000-of-00001.parquet``) or a single .parquet/.jsonl file (split "train").
The cookbook's version read everything into pandas and wrote it with ``to_json``; this one
keeps memory flat (batches of rows) and checks what it writes.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger(__name__)

DEFAULT_DATASET = "HuggingFaceH4/ultrachat_200k"
DEFAULT_SPLITS = ("train_sft", "test_sft")
BATCH_ROWS = 1000


def split_spec(split: str, percent: float) -> str:
    """``datasets`` split slicing: the first ``percent`` % of ``split``."""
    if not 0 < percent <= 100:
        raise ValueError(f"--dataset_split_pc must be in (0, 100], got {percent}")
    if percent == 100:
        return split
    pc = int(percent) if float(percent).is_integer() else percent
    return f"{split}[:{pc}%]"


def load_split(dataset: str, split: str, percent: float, cache_dir: str | None = None) -> Any:
    """Load ``split`` of a hub dataset name, a local dataset folder, or a single data file."""
    from datasets import load_dataset

    spec = split_spec(split, percent)
    path = Path(dataset)
    if path.is_file():
        builder = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: expected a .parquet or .jsonl file")
        # A single file is the split "train" whatever --splits says.
        return load_dataset(builder, data_files={"train": str(path)}, split=split_spec("train", percent), cache_dir=cache_dir)
    return load_dataset(str(path) if path.is_dir() else dataset, split=spec, cache_dir=cache_dir)


def to_chat_rows(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Rows in the ultrachat_200k schema, keys in its order; other columns are dropped."""
    for row in rows:
        messages = row.get("messages")
        if not isinstance(messages, list):
            raise ValueError(f"row without a 'messages' list (columns: {sorted(row)})")
        yield {
            "prompt": row.get("prompt"),
            "prompt_id": row.get("prompt_id"),
            "messages": [{"content": m.get("content"), "role": m.get("role")} for m in messages],
        }


def write_jsonl(dataset: Any, out_path: Path) -> int:
    """Stream a `datasets.Dataset` to JSONL in batches; returns the number of rows written."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(out_path.suffix + ".tmp")
    count = 0
    with open(tmp, "wb") as f:
        for batch in dataset.iter(batch_size=BATCH_ROWS):
            columns = list(batch)
            rows = (dict(zip(columns, values, strict=True)) for values in zip(*(batch[c] for c in columns), strict=True))
            for row in to_chat_rows(rows):
                f.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
                count += 1
    tmp.replace(out_path)  # never leave a half-written file under the final name
    return count


def upload(path: Path, blob_name: str) -> str:
    """Upload a file to the chat-data container (which triggers preparation)."""
    from shared.settings import get_settings
    from shared.storage import blob_service, ensure_storage

    s = get_settings()
    ensure_storage(s)
    with open(path, "rb") as f:
        blob_service(s).get_blob_client(s.chat_data_container, blob_name).upload_blob(f, overwrite=True)
    return f"{s.chat_data_container}/{blob_name}"


def dataset_slug(dataset: str) -> str:
    return Path(dataset.rstrip("/")).name.replace(".", "_") or "dataset"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="hub dataset name, local dataset folder, or .parquet/.jsonl file")
    p.add_argument("--dataset_split_pc", type=float, default=5.0, help="percentage of each split to take (default 5)")
    p.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), help="splits to write (default train_sft test_sft)")
    p.add_argument("--out-dir", required=True, help="folder for <split>.jsonl")
    p.add_argument("--cache-dir", help="datasets cache folder (default: HF_HOME's)")
    p.add_argument("--upload", action="store_true", help="upload the first split to the chat-data container")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    out_dir = Path(args.out_dir)
    written: list[Path] = []
    for split in args.splits:
        try:
            data = load_split(args.dataset, split, args.dataset_split_pc, args.cache_dir)
        except Exception as exc:  # offline hub, unknown dataset or split: say which, exit 1
            print(f"cannot load {args.dataset} split {split}: {exc}", file=sys.stderr)
            return 1
        out_path = out_dir / f"{split}.jsonl"
        count = write_jsonl(data, out_path)
        print(f"{split}: {count} rows -> {out_path}")
        written.append(out_path)
    if args.upload and written:
        name = f"{dataset_slug(args.dataset)}-{written[0].stem}-{args.dataset_split_pc:g}pc.jsonl"
        print(f"uploaded {written[0]} as {upload(written[0], name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
