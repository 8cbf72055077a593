"""Per-collection rules every answer of a candidate must keep (``EVAL_RULES``).

``EVAL_RULES`` is a JSON object: collection name (or ``"*"`` for every collection) -> list of
rules. A rule is one of::

    {"must": "<regex>"}                 the answer matches (re.search)
    {"must_not": "<regex>"}             the answer does not match
    {"json": true}                      the answer is valid JSON
    {"min_chars": 1, "max_chars": 800}  the answer's length is within bounds (either may be left out)

each with an optional ``"name"`` (default: derived from the rule) and ``"min_pass_rate"`` (share of
answers that must keep it, default 1.0: every answer). A candidate is promoted only if it keeps
every rule (:mod:`shared.evaluation.decision`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

KINDS = ("must", "must_not", "json", "length")
_KEYS = {"name", "must", "must_not", "json", "min_chars", "max_chars", "min_pass_rate"}
EXAMPLES_KEPT = 5


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    kind: str
    pattern: re.Pattern[str] | None = None
    min_chars: int | None = None
    max_chars: int | None = None
    min_pass_rate: float = 1.0

    def keeps(self, answer: str) -> bool:
        if self.kind == "must":
            return self.pattern is not None and self.pattern.search(answer) is not None
        if self.kind == "must_not":
            return self.pattern is None or self.pattern.search(answer) is None
        if self.kind == "json":
            try:
                json.loads(answer)
            except ValueError:
                return False
            return True
        n = len(answer)
        return (self.min_chars is None or n >= self.min_chars) and (self.max_chars is None or n <= self.max_chars)


def _rule(where: str, spec: Any) -> Rule:
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: a rule is a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} (allowed: {sorted(_KEYS)})")
    kinds = [k for k in ("must", "must_not", "json") if k in spec] + (["length"] if {"min_chars", "max_chars"} & set(spec) else [])
    if len(kinds) != 1:
        raise ValueError(f"{where}: exactly one of must, must_not, json, min_chars/max_chars per rule (got {kinds or 'none'})")
    kind = kinds[0]
    rate = spec.get("min_pass_rate", 1.0)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"{where}: min_pass_rate={rate!r} must be a number between 0 and 1")
    pattern = None
    bounds: dict[str, int | None] = {"min_chars": None, "max_chars": None}
    if kind in ("must", "must_not"):
        raw = spec[kind]
        if not isinstance(raw, str) or not raw:
            raise ValueError(f"{where}: {kind} must be a non-empty regular expression string")
        try:
            pattern = re.compile(raw)
        except re.error as exc:
            raise ValueError(f"{where}: {kind}={raw!r} is not a valid regular expression ({exc})") from None
        default_name = f"{kind} /{raw}/"
    elif kind == "json":
        if spec["json"] is not True:
            raise ValueError(f"{where}: json must be true")
        default_name = "valid JSON"
    else:
        for key in bounds:
            value = spec.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"{where}: {key}={value!r} must be a whole number >= 0")
            bounds[key] = value
        if bounds["min_chars"] is not None and bounds["max_chars"] is not None and bounds["min_chars"] > bounds["max_chars"]:
            raise ValueError(f"{where}: min_chars {bounds['min_chars']} is above max_chars {bounds['max_chars']}")
        default_name = f"length {bounds['min_chars'] or 0}..{bounds['max_chars'] if bounds['max_chars'] is not None else ''} chars"
    name = spec.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: name must be a non-empty string")
    return Rule(name, kind, pattern, bounds["min_chars"], bounds["max_chars"], float(rate))


def parse_rules(raw: dict[str, Any], env_name: str = "EVAL_RULES") -> dict[str, tuple[Rule, ...]]:
    """``EVAL_RULES`` parsed and checked; a ValueError names the collection and rule index at fault."""
    parsed: dict[str, tuple[Rule, ...]] = {}
    for collection, specs in raw.items():
        if not isinstance(specs, list):
            raise ValueError(f"{env_name}[{collection!r}] must be a list of rules, got {type(specs).__name__}")
        rules = tuple(_rule(f"{env_name}[{collection!r}][{k}]", spec) for k, spec in enumerate(specs))
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"{env_name}[{collection!r}]: rule names must be distinct, got {names}")
        parsed[str(collection)] = rules
    return parsed


def rules_for(raw: dict[str, Any], collection: str) -> tuple[Rule, ...]:
    """The rules of ``collection``: those for ``"*"`` then its own."""
    parsed = parse_rules(raw)
    return (*parsed.get("*", ()), *parsed.get(collection, ()))


def check_rules(rules: tuple[Rule, ...], answers: list[tuple[str, str | None]]) -> dict[str, dict[str, Any]]:
    """``answers``: (item id, answer or None when the call failed). A failed call breaks every rule.

    Returns, per rule: passed, pass_rate, min_pass_rate, kept, total, failures (up to 5 item ids).
    """
    results: dict[str, dict[str, Any]] = {}
    for rule in rules:
        failures = [item for item, answer in answers if answer is None or not rule.keeps(answer)]
        total = len(answers)
        rate = (total - len(failures)) / total if total else 1.0
        results[rule.name] = {"kind": rule.kind, "passed": rate >= rule.min_pass_rate, "pass_rate": round(rate, 4),
                              "min_pass_rate": rule.min_pass_rate, "kept": total - len(failures), "total": total,
                              "failures": failures[:EXAMPLES_KEPT]}
    return results
