"""Command line: ``python -m shared.cli {prepare,plan,status,report,rollback,datasets retire,promote,reject}``.

Each subcommand's work lives with its domain module; this file only parses arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from shared.settings import SettingsError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shared.cli", description="Fine-tuning autopilot command line")
    sub = p.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="validate, de-duplicate and split a chat data file locally")
    prep.add_argument("input", help="chat data file (.jsonl, .jsonl.gz or .parquet)")
    prep.add_argument("--out-dir", required=True, help="folder for train.jsonl, test.jsonl and report.json")
    prep.add_argument("--quiet", action="store_true", help="print nothing but errors")
    prep.add_argument("--tokenizer", help="a Hugging Face tokenizer.json: adds token counts to the report's statistics")

    plan = sub.add_parser("plan", help="write the Azure ML pipeline job the app would submit, as YAML")
    plan.add_argument("--train", required=True, help="train file URI (azureml://..., https://... or a local path)")
    plan.add_argument("--test", required=True, help="test file URI")
    plan.add_argument("--out", help="write the YAML here instead of standard output")

    rollback = sub.add_parser("rollback", help="make an earlier version of a model active again (redeployed if needed)")
    rollback.add_argument("model", help="fine-tuned model name (or NAME:VERSION)")
    rollback.add_argument("version", nargs="?", help="version to roll back to (default: the one before the active one)")

    status = sub.add_parser("status", help="datasets, jobs, models and endpoints with their states")
    status.add_argument("--json", action="store_true", help="machine-readable output (stable contract)")
    status.add_argument("--watch", type=float, nargs="?", const=5.0, metavar="SECONDS",
                        help="redraw every SECONDS (default 5) until Ctrl+C: a running job's step, loss and ETA move")

    report = sub.add_parser("report", help="print a dataset's preparation report (from storage)")
    report.add_argument("dataset", help="dataset id (see `status`)")
    report.add_argument("--json", action="store_true", help="the report.json as stored")

    datasets = sub.add_parser("datasets", help="manage datasets (corpus mode)")
    dsub = datasets.add_subparsers(dest="datasets_command", required=True)
    retire = dsub.add_parser("retire", help="leave a dataset out of its collection's next corpus (upload and report stay)")
    retire.add_argument("dataset_id", metavar="ID", help="dataset id (see `status`)")
    promote = sub.add_parser("promote", help="let an evaluated candidate take traffic: the rule re-applied to its stored answers, or --force")
    promote.add_argument("model", metavar="NAME:VERSION", help="the candidate (see `status`)")
    promote.add_argument("--force", action="store_true", help="promote even though the evaluation rejected it")
    reject = sub.add_parser("reject", help="keep a candidate from traffic (or take it off its canary)")
    reject.add_argument("model", metavar="NAME:VERSION", help="the candidate (see `status`)")
    reject.add_argument("--reason", help="why (recorded with the decision)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "prepare":
            from shared.cli.prepare import cli_prepare

            return cli_prepare(args)
        if args.command == "plan":
            from shared.cli.plan import cli_plan

            return cli_plan(args)
        if args.command == "rollback":
            from shared.endpoints.rollback import cli_rollback

            return cli_rollback(args)
        if args.command == "report":
            from shared.observability.status import cli_report

            return cli_report(args)
        if args.command == "status":
            from shared.observability.status import cli_status

            return cli_status(args)
        if args.command in ("promote", "reject"):
            from shared.evaluation.judge import cli_decide

            return cli_decide(args)
        if args.command == "datasets":
            from shared.training.submission import cli_datasets

            return cli_datasets(args)
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`make status | head`): stop quietly, like other Unix tools.
        # Point stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
