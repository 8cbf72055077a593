"""checkov's Bicep checks pass on infra/: no failed check, no parse error, every skip justified.

checkov runs from its own venv (.local/checkov, `make checkov`; `make test` builds it first):
its dependency pins differ from the project's. A missing checkov is a failure, never a skip.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path

from tests.bicep_checks import INFRA, ROOT, bicep_files

CHECKOV = ROOT / ".local" / "checkov" / "bin" / "checkov"
# Suppressions are `// checkov:skip=CKV_ID: reason` inside the resource they concern.
MIN_REASON_CHARS = 20


@functools.lru_cache(maxsize=1)
def checkov_report() -> dict:
    assert CHECKOV.is_file(), f"checkov is not installed at {CHECKOV.relative_to(ROOT)}: run `make checkov`"
    proc = subprocess.run(
        [str(CHECKOV), "--framework", "bicep", "--directory", str(INFRA), "--output", "json", "--compact", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT / ".local"), "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    assert proc.stdout.strip(), f"checkov printed nothing (rc {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    (bicep,) = [r for r in reports if r.get("check_type") == "bicep"]
    return bicep


def test_checkov_has_no_failed_check() -> None:
    report = checkov_report()
    failed = report["results"].get("failed_checks", [])
    assert not failed, "checkov failed checks:\n" + "\n".join(
        f"{c['check_id']} {c['check_name']} at {c['file_path']}:{c['file_line_range']} ({c['resource']})" for c in failed
    )


def test_checkov_parsed_every_file() -> None:
    summary = checkov_report()["summary"]
    assert summary["parsing_errors"] == 0, f"checkov could not parse {summary['parsing_errors']} file(s) (its pycep is older: see docs/deploying.md)"
    assert summary["resource_count"] > 0 and summary["passed"] > 0, summary


def test_every_skip_is_justified_on_its_line() -> None:
    skipped = checkov_report()["results"].get("skipped_checks", [])
    for c in skipped:
        reason = (c.get("check_result") or {}).get("suppress_comment", "").strip()
        assert len(reason) >= MIN_REASON_CHARS and reason != "No comment provided", (
            f"skip of {c['check_id']} on {c['resource']} ({c['file_path']}) has no real justification: {reason!r}"
        )
    # every skip comment in the sources is one checkov honoured (no stale or misplaced skips)
    honoured = {(Path(c["file_abs_path"]).name, c["check_id"], c["resource"].rsplit(".", 1)[1]) for c in skipped}
    written = set()
    for path in bicep_files():
        current = None
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.startswith("resource "):
                current = line.split()[1]
            if "checkov:skip=" in line:
                check = line.split("checkov:skip=", 1)[1].split(":", 1)[0].strip()
                written.add((path.name, check, current))
    assert written == honoured, f"skips written but not applied: {sorted(written - honoured)}; applied but not found: {sorted(honoured - written)}"
