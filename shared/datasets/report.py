"""The preparation report: counts, bad lines, warnings, length statistics, the data quality gate's
findings, the cost forecast, and the decision: accepted only with at least ``MIN_VALID_EXAMPLES``
valid conversations, at most ``MAX_INVALID_SHARE`` invalid lines, the file read to the end, both
splits non-empty and nothing the quality gate refuses.

Built once per file from the state of its preparation pass (:mod:`.preparation`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.datasets.preparation import _Preparation


def preparation_report(prep: _Preparation, source: dict[str, Any], elapsed_s: float) -> dict[str, Any]:
    """The report.json of one preparation: what was read, what was wrong, and the decision."""
    s = prep.settings
    invalid = sum(prep.invalid.values())
    considered = prep.valid + invalid + prep.duplicates
    share = invalid / considered if considered else 0.0
    reasons: list[str] = []
    if prep.unreadable:
        reasons.append(f"the file could not be read to the end: {prep.unreadable}")
    if prep.refused:
        reasons.append(f"reading stopped: {prep.refused}")
    if prep.valid < s.min_valid_examples:
        reasons.append(f"{prep.valid} valid conversations, fewer than the minimum of {s.min_valid_examples}")
    if share > s.max_invalid_share:
        reasons.append(f"{invalid} of {considered} lines are invalid ({share:.1%}), above the maximum of {s.max_invalid_share:.1%}")
    if prep.valid and (not prep.n_train or not prep.n_test):
        reasons.append("too few conversations for both a train and a test split")
    quality = prep.quality.report() if prep.quality is not None else None
    if prep.quality is not None:
        reasons.extend(prep.quality.decision_reasons())
    accepted = not reasons
    if accepted:
        reasons = [f"{prep.valid} valid conversations (minimum {s.min_valid_examples})",
                   f"{share:.1%} invalid lines (maximum {s.max_invalid_share:.1%})"]
    warnings = sorted(prep.warnings.values(), key=lambda w: w["first_line"])
    tokens = prep.tokens.summary()
    return {
        "source": source,
        "counts": {
            "lines": prep.lines,
            "blank_lines": prep.blank,
            "valid": prep.valid,
            "invalid": invalid,
            "invalid_by_kind": dict(sorted(prep.invalid.items())),
            "duplicates": prep.duplicates,
            "train": prep.n_train,
            "test": prep.n_test,
        },
        "errors": prep.errors,
        "errors_omitted": prep.errors_omitted,
        "warnings": warnings,
        "warnings_omitted": prep.warnings_omitted,
        "stats": {
            "messages_per_conversation": prep.messages.summary(),
            "characters_per_conversation": prep.chars.summary(),
            "tokens_per_conversation": tokens,
            "tokens_note": (f"estimated on the first {prep.tokens.count} valid conversations (content only, no chat template)"
                            if tokens else "no tokenizer configured: token counts not computed"),
        },
        "decision": {"accepted": accepted, "reasons": reasons},
        "quality": quality,
        "forecast": _forecast(prep, tokens),
        "policy": {"min_valid_examples": s.min_valid_examples, "max_invalid_share": s.max_invalid_share,
                   "test_fraction": s.test_fraction},
        "elapsed_s": round(elapsed_s, 3),
    }


def _forecast(prep: _Preparation, tokens: dict[str, Any] | None) -> dict[str, Any]:
    """The cost forecast of training on this file's train split (shared.datasets.quality.cost_forecast)."""
    from shared.datasets.quality import cost_forecast

    chars = prep.chars.summary()
    mean_chars = chars["mean"] if chars else 0.0
    return cost_forecast(prep.settings, conversations=prep.n_train, characters=int(mean_chars * prep.n_train),
                         tokens_per_conversation=tokens["mean"] if tokens else None)
