"""``python -m shared.cli prepare``: prepare a local chat data file and print its report.

``report_summary`` is the report for a terminal, printed by ``prepare`` and by ``report``
(a dataset's stored report, :mod:`shared.observability.status`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from shared.datasets.preparation import prepare_file
from shared.datasets.uploads import FORMATS, detect_format
from shared.settings import get_settings


def cli_prepare(args: Any) -> int:
    """``python -m shared.cli prepare INPUT --out-dir DIR``: 0 accepted, 2 rejected, 1 unusable input."""
    path = Path(args.input)
    out_dir = Path(args.out_dir)
    quiet = getattr(args, "quiet", False)
    if not path.is_file():
        print(f"{path}: no such file", file=sys.stderr)
        return 1
    if detect_format(path.name) is None:
        print(f"{path.name}: not a chat data file (expected {', '.join(FORMATS)})", file=sys.stderr)
        return 1
    tokenizer = getattr(args, "tokenizer", None)
    counter = tokenizer_counter(tokenizer) if tokenizer else None
    prepared = prepare_file(path, out_dir, get_settings(), token_counter=counter)
    report = prepared.report
    if not quiet:
        print("\n".join(report_summary(path.name, report)))
        print(f"wrote {out_dir / 'train.jsonl'}, {out_dir / 'test.jsonl'}, {out_dir / 'report.json'}")
    return 0 if prepared.accepted else 2


def report_summary(name: str, report: dict[str, Any]) -> list[str]:
    """A report for a terminal: counts, invalid lines by kind, the first errors, warnings, the decision
    (``prepare`` and ``report`` print it)."""
    c = report["counts"]
    lines = [f"{name}: {c['lines']} lines, {c['valid']} valid, {c['invalid']} invalid, "
             f"{c['duplicates']} duplicates, {c['blank_lines']} blank -> train {c['train']}, test {c['test']}"]
    lines += [f"  {kind}: {n}" for kind, n in c["invalid_by_kind"].items()]
    lines += [f"  {text}" for text in list(iter_errors(report))[:10]]
    shown = min(10, len(report["errors"]))
    more = len(report["errors"]) - shown + report["errors_omitted"]
    if more:
        lines.append(f"  ... and {more} more (see report.json)")
    lines += [f"  warning: {w['message']} ({w['count']} times, first on line {w['first_line']})" for w in report["warnings"][:5]]
    decision = "ACCEPTED" if report["decision"]["accepted"] else "REJECTED"
    lines.append(f"{decision}: " + "; ".join(report["decision"]["reasons"]))
    return lines


def iter_errors(report: dict[str, Any]) -> Iterator[str]:
    for err in report.get("errors", []):
        yield f"line {err['line']}: {err['kind']}: {err['message']}"


def tokenizer_counter(tokenizer_file: str) -> Callable[[list[dict[str, str]]], int]:
    """Token counter from a Hugging Face ``tokenizer.json`` (``tokenizers`` imported only here)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(tokenizer_file)

    def count(messages: list[dict[str, str]]) -> int:
        return sum(len(e.ids) for e in tokenizer.encode_batch([m["content"] for m in messages], add_special_tokens=False))

    return count

