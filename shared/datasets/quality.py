"""The data quality gate: what an upload holds besides valid conversations, before money is spent.

Computed in preparation's own streaming pass (``shared.datasets.chat_data`` calls
:meth:`QualityScan.observe` for every valid, distinct conversation), in bounded memory:

- **personal data and secrets** in content: e-mail addresses, phone numbers, card numbers (Luhn
  checked), IBANs (ISO 13616 mod-97 checked), cloud keys and tokens (AWS access keys, GitHub,
  Slack, Google API, OpenAI-style ``sk-`` keys, Azure storage account keys and SAS signatures,
  JWTs) and private key blocks: counted by kind with the line numbers, never the values;
- the **base model's special tokens** inside content (``<|im_start|>`` in SmolLM2's chat
  template, ``<|end|>`` in Phi-3's, ...): they break the chat template at training time;
- **near-duplicate conversations** within the upload (MinHash LSH, ``datasketch``: word 3-grams of
  the conversation's first ``NEAR_DUP_WORDS`` words), and **leakage**:
  conversations equal or near-equal to one of the collection's held-out evaluation set;
- a **cost forecast**: :func:`cost_forecast` (tokens x epochs / throughput x instance price).

``DATA_POLICY`` (per collection) says what a finding does: ``report`` (only reported),
``redact`` (the prepared copy has every personal datum and secret replaced by
``[REDACTED:<kind>]`` and every special token by ``[SPECIAL_TOKEN]``; the raw upload is never
changed) or ``reject`` (any finding rejects the upload, with the counts as the reason).

Memory: the near-duplicate index holds one MinHash LSH entry per conversation up to
``NEAR_DUP_INDEX_MAX`` conversations (then later ones are still checked against it, not added:
the report says so), the rest is counters and at most ``MAX_LINES_LISTED`` line numbers per kind.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from typing import Any

import xxhash

from shared.settings import Settings

POLICIES = ("report", "redact", "reject")
MAX_LINES_LISTED = 50
NUM_PERM = 32
NEAR_DUP_WORDS = 96
NEAR_DUP_INDEX_MAX = 30_000
# Characters per token when no tokenizer is configured (English chat text; the report says so).
CHARS_PER_TOKEN = 4.0

# --------------------------------------------------------------------------- personal data and secrets

# kind -> (pattern, validator of the match or None). Each pattern is cheap to scan for: a
# literal or a narrow first character, so a conversation without any costs a few passes in C.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}")
# International (+CC ...) or North American (NXX NXX XXXX) numbers, not part of a longer digit run.
_PHONE = re.compile(r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){1,2}[ .-]?\d{3,4}[ .-]?\d{3,4}"
                    r"|\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4})(?![ .-]?\d)(?!\w)")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"(?<![A-Z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Z0-9])")
_SECRETS: dict[str, re.Pattern[str]] = {
    "aws_access_key": re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])"),
    "github_token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})"),
    "slack_token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "google_api_key": re.compile(r"\bAIza[0-9A-Za-z_-]{35}"),
    "openai_key": re.compile(r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}"),
    "azure_storage_key": re.compile(r"AccountKey=[A-Za-z0-9+/]{40,}={0,2}"),
    "azure_sas_signature": re.compile(r"[?&]sig=[A-Za-z0-9%+/]{20,}={0,2}"),
    "jwt": re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    # the whole block where its END line follows (so redaction removes the key, not only the header)
    "private_key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
                              r"(?:[A-Za-z0-9+/=\s:,-]{0,16384}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)?"),
}
PII_KINDS = ("email", "phone", "card_number", "iban")
SECRET_KINDS = tuple(_SECRETS)
# Every key and token above is one whitespace-free run of 16 or more characters (prose has few
# such words): the secret patterns run only on those, and on text with a private key header.
SECRET_MIN_WORD = 16
_KEY_HEADER = "-----BEGIN"
_DIGITS = b"0123456789"
MIN_DIGITS = 7  # the shortest phone number; card numbers and IBANs have more


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum of a card number (digits only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# ISO 13616 IBAN lengths by country (the SWIFT IBAN registry), so "DE12 ..." of the wrong length is no IBAN.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "CH": 21,
    "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18,
    "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23,
    "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}


def iban_ok(text: str) -> bool:
    """ISO 13616: the country's length and the mod-97 check (rearranged, letters as 10..35) equal 1."""
    iban = text.replace(" ", "")
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _digit_count(text: str) -> int:
    data = text.encode("utf-8", "surrogatepass")
    return len(data) - len(data.translate(None, _DIGITS))


def find_sensitive(text: str, words: list[str] | None = None) -> list[tuple[str, int, int]]:
    """``(kind, start, end)`` of each personal datum or secret in ``text`` (validated where a checksum exists).

    ``words`` (``text.split()``, when the caller has it) decides cheaply whether secrets can be there.
    """
    found: list[tuple[str, int, int]] = []
    if "@" in text:
        found.extend(("email", m.start(), m.end()) for m in _EMAIL.finditer(text))
    if _digit_count(text) >= MIN_DIGITS:
        for m in _CARD.finditer(text):
            digits = re.sub(r"[ -]", "", m.group())
            if 13 <= len(digits) <= 19 and luhn_ok(digits) and len(set(digits)) > 1:
                found.append(("card_number", m.start(), m.end()))
        for m in _IBAN.finditer(text):
            if iban_ok(m.group()):
                found.append(("iban", m.start(), m.end()))
        taken = [(s, e) for k, s, e in found if k in ("card_number", "iban")]
        for m in _PHONE.finditer(text):
            if not any(s < m.end() and m.start() < e for s, e in taken):
                found.append(("phone", m.start(), m.end()))
    if words is None:
        words = text.split()
    if (words and max(map(len, words)) >= SECRET_MIN_WORD) or _KEY_HEADER in text:
        for kind, pattern in _SECRETS.items():
            found.extend((kind, m.start(), m.end()) for m in pattern.finditer(text))
    return found


def redact(text: str, spans: list[tuple[str, int, int]]) -> str:
    """``text`` with each span replaced by ``[REDACTED:<kind>]`` (overlaps: the earliest, longest wins)."""
    out, pos = [], 0
    for kind, start, end in sorted(spans, key=lambda s: (s[1], -s[2])):
        if start < pos:
            continue
        out.append(text[pos:start])
        out.append("[SPECIAL_TOKEN]" if kind == "special_token" else f"[REDACTED:{kind}]")
        pos = end
    out.append(text[pos:])
    return "".join(out)


# --------------------------------------------------------------------------- special tokens

# Published special tokens of the Azure ML foundation models this app fine-tunes (the
# tokenizer's added tokens with "special": true; tests/fixtures/special_tokens/README.md names
# the sources). The local base models' come from their own tokenizer.json.
PUBLISHED_SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "Phi-3-mini-4k-instruct": ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|placeholder1|>",
                               "<|placeholder2|>", "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>",
                               "<|placeholder5|>", "<|placeholder6|>", "<|user|>"),
    "Phi-3-mini-128k-instruct": ("<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|placeholder1|>",
                                 "<|placeholder2|>", "<|placeholder3|>", "<|placeholder4|>", "<|system|>", "<|end|>",
                                 "<|placeholder5|>", "<|placeholder6|>", "<|user|>"),
    "SmolLM2-135M-Instruct": ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
                              "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
                              "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>",
                              "<jupyter_script>", "<empty_output>"),
}


def special_tokens_from_tokenizer_json(path: Any) -> tuple[str, ...]:
    """The added tokens marked special in a Hugging Face ``tokenizer.json``."""
    import orjson

    with open(path, "rb") as f:
        data = orjson.loads(f.read())
    return tuple(t["content"] for t in data.get("added_tokens", []) if t.get("special") and t.get("content"))


def special_tokens_for(settings: Settings) -> tuple[tuple[str, ...], str]:
    """``(tokens, where they came from)`` for the configured base model.

    Local backend: the base model folder's ``tokenizer.json`` (the tokenizer training uses), when
    it has been built; else, as for Azure ML, the published list for the model's name.
    """
    if settings.ml_backend == "local":
        try:
            from localworkspace.base_model import base_model_dir

            path = base_model_dir(settings.local_base_model, settings.local_model_cache) / "tokenizer.json"
            if path.is_file():
                return special_tokens_from_tokenizer_json(path), f"tokenizer.json of local base model {settings.local_base_model!r}"
        except (ImportError, OSError, ValueError):
            pass
        # tiny-random uses SmolLM2's tokenizer
        return PUBLISHED_SPECIAL_TOKENS["SmolLM2-135M-Instruct"], "published special tokens of SmolLM2-135M-Instruct"
    name = settings.foundation_model_name
    tokens = PUBLISHED_SPECIAL_TOKENS.get(name)
    if tokens is None:
        return (), f"no special token list known for {name!r}: not checked"
    return tokens, f"published special tokens of {name}"


# --------------------------------------------------------------------------- near-duplicates

_TEMPLATE: Any = None


def _new_minhash() -> Any:
    """An empty MinHash (datasketch, affine32 scheme, seed 1, xxh32 of each shingle).

    Copied from one template: building each with ``MinHash(...)`` re-derives or re-validates the
    permutations every time, which costs more than hashing a conversation's shingles.
    """
    from datasketch import MinHash

    global _TEMPLATE
    if _TEMPLATE is None:
        _TEMPLATE = MinHash(num_perm=NUM_PERM, seed=1, hashfunc=xxhash.xxh32_intdigest)
    m = MinHash.__new__(MinHash)
    m.__dict__.update(_TEMPLATE.__dict__)
    m.hashvalues = _TEMPLATE.hashvalues.copy()
    return m


def conversation_minhash(contents: Iterable[str]) -> Any | None:
    """MinHash (datasketch) of a conversation: word 3-grams of its first ``NEAR_DUP_WORDS`` words,
    lower-cased (bounded work per row). None when it has fewer than 3 words."""
    return _minhash_of_words("\n".join(contents).split())


def _minhash_of_words(all_words: list[str]) -> Any | None:
    words = " ".join(all_words[:NEAR_DUP_WORDS]).lower().split()
    if len(words) < 3:
        return None
    m = _new_minhash()
    m.update_batch(set(map(str.encode, map(" ".join, zip(words, words[1:], words[2:], strict=False)))))
    return m


def _new_lsh(threshold: float) -> Any:
    from datasketch import MinHashLSH

    return MinHashLSH(threshold=threshold, num_perm=NUM_PERM)


def find_leaks(train: Iterable[list[dict[str, str]]], held_out: Iterable[list[dict[str, str]]], *,
               threshold: float = 0.8) -> list[tuple[int, int]]:
    """``(train index, held-out index)`` of each training conversation equal or near-equal (MinHash LSH,
    estimated Jaccard of word 3-grams >= ``threshold``) to a held-out one; 0-based indices."""
    index = HeldOutIndex(held_out, threshold)
    leaks = []
    for i, messages in enumerate(train):
        hit = index.match([m["content"] for m in messages], [m["role"] for m in messages])
        if hit is not None:
            leaks.append((i, hit))
    return leaks


class HeldOutIndex:
    """A held-out evaluation set to check training conversations against (exact digest, then MinHash LSH)."""

    def __init__(self, held_out: Iterable[list[dict[str, str]]], threshold: float):
        from shared.datasets.chat_data import conversation_digest

        self.digests: dict[int, int] = {}
        self.lsh = _new_lsh(threshold)
        self.size = 0
        for i, messages in enumerate(held_out):
            contents = [str(m.get("content", "")).strip() for m in messages]
            roles = [str(m.get("role", "")).strip().lower() for m in messages]
            self.digests.setdefault(conversation_digest(roles, contents), i)
            m = conversation_minhash(contents)
            if m is not None:
                self.lsh.insert(i, m, check_duplication=False)
            self.size += 1

    def match(self, contents: list[str], roles: list[str], minhash: Any = None) -> int | None:
        from shared.datasets.chat_data import conversation_digest

        hit = self.digests.get(conversation_digest(roles, contents))
        if hit is not None:
            return hit
        m = minhash if minhash is not None else conversation_minhash(contents)
        if m is None:
            return None
        found = self.lsh.query(m)
        return min(found) if found else None


# --------------------------------------------------------------------------- the scan


@dataclasses.dataclass
class _Finding:
    count: int = 0
    lines: list[int] = dataclasses.field(default_factory=list)

    def add(self, line: int, n: int = 1) -> None:
        self.count += n
        if len(self.lines) < MAX_LINES_LISTED and (not self.lines or self.lines[-1] != line):
            self.lines.append(line)


class QualityScan:
    """The gate's state for one preparation pass.

    ``observe(line, roles, contents)`` is called once per valid, distinct conversation and returns
    the contents to write: the same list (nothing to change) or a redacted copy (policy ``redact``).
    """

    def __init__(self, settings: Settings, collection: str | None = None, *,
                 held_out: Iterable[list[dict[str, str]]] | None = None,
                 special_tokens: tuple[str, ...] | None = None, special_tokens_source: str = ""):
        self.collection = collection or "default"
        self.policy = settings.data_policy_for(self.collection)
        if special_tokens is None:
            special_tokens, special_tokens_source = special_tokens_for(settings)
        self.special_tokens = special_tokens
        self.special_tokens_source = special_tokens_source
        self._special = (re.compile("|".join(map(re.escape, sorted(special_tokens, key=len, reverse=True))))
                         if special_tokens else None)
        self._special_first = tuple(sorted({t[0] for t in special_tokens}))
        self.findings: dict[str, _Finding] = {}
        self.special_by_token: dict[str, int] = {}
        self.threshold = settings.near_duplicate_threshold
        self.lsh: Any = None  # created with the first conversation (datasketch imports scipy: ~50 MB)
        self.indexed = 0
        self.index_full_at: int | None = None
        self.near_duplicates: list[tuple[int, int]] = []  # (line, the earlier line it resembles), first MAX_LINES_LISTED
        self.near_duplicate_count = 0
        self.held_out = HeldOutIndex(held_out, self.threshold) if held_out is not None else None
        self.leaks: list[tuple[int, int]] = []
        self.leak_count = 0
        self.redacted_lines = 0

    def _special_first_in(self, text: str) -> bool:
        return any(ch in text for ch in self._special_first)

    def _finding(self, kind: str) -> _Finding:
        found = self.findings.get(kind)
        if found is None:
            found = self.findings[kind] = _Finding()
        return found

    def observe(self, line: int, roles: list[str], contents: list[str]) -> list[str]:
        redacting = self.policy == "redact"
        out: list[str] | None = None
        special = self._special
        joined = "\n".join(contents)
        words = joined.split()
        if not (find_sensitive(joined, words) or (special is not None and self._special_first_in(joined) and special.search(joined))):
            indices: Iterable[int] = ()
        else:
            indices = range(len(contents))
        for i in indices:
            text = contents[i]
            spans = find_sensitive(text)
            if special is not None:
                for m in special.finditer(text):
                    spans.append(("special_token", m.start(), m.end()))
                    token = m.group()
                    self.special_by_token[token] = self.special_by_token.get(token, 0) + 1
            if not spans:
                continue
            for kind, _, _ in spans:
                self._finding(kind).add(line)
            if redacting:
                if out is None:
                    out = list(contents)
                out[i] = redact(text, spans)
        if out is not None:
            self.redacted_lines += 1
        m = _minhash_of_words(words)
        if m is not None:
            if self.lsh is None:
                self.lsh = _new_lsh(self.threshold)
            similar = self.lsh.query(m)
            if similar:
                self.near_duplicate_count += 1
                if len(self.near_duplicates) < MAX_LINES_LISTED:
                    self.near_duplicates.append((line, min(similar)))
            if self.indexed < NEAR_DUP_INDEX_MAX:
                self.lsh.insert(line, m, check_duplication=False)
                self.indexed += 1
            elif self.index_full_at is None:
                self.index_full_at = line
        if self.held_out is not None:
            hit = self.held_out.match(contents, roles, m)
            if hit is not None:
                self.leak_count += 1
                if len(self.leaks) < MAX_LINES_LISTED:
                    self.leaks.append((line, hit))
        return out if out is not None else contents

    # ------------------------------------------------------------------ the report

    def counts(self) -> dict[str, int]:
        """Counts by kind (for the ledger, ``status`` and the dashboard)."""
        pii = sum(self.findings[k].count for k in PII_KINDS if k in self.findings)
        secrets = sum(self.findings[k].count for k in SECRET_KINDS if k in self.findings)
        special = self.findings["special_token"].count if "special_token" in self.findings else 0
        return {"personal_data": pii, "secrets": secrets, "special_tokens": special,
                "near_duplicates": self.near_duplicate_count, "leaks": self.leak_count}

    def problems(self) -> list[str]:
        """One sentence per kind of finding, with counts and lines (never values)."""
        out = []
        for kind, found in sorted(self.findings.items()):
            lines = ", ".join(map(str, found.lines[:10])) + (" ..." if len(found.lines) > 10 or found.count > len(found.lines) else "")
            out.append(f"{found.count} {kind.replace('_', ' ')} finding(s) (lines {lines})")
        if self.near_duplicate_count:
            pairs = ", ".join(f"{a}~{b}" for a, b in self.near_duplicates[:10])
            out.append(f"{self.near_duplicate_count} near-duplicate conversation(s) (line~earlier line: {pairs})")
        if self.leak_count:
            pairs = ", ".join(f"{a}" for a, _ in self.leaks[:10])
            out.append(f"{self.leak_count} conversation(s) equal or near-equal to the held-out evaluation set (lines {pairs})")
        return out

    def report(self) -> dict[str, Any]:
        counts = self.counts()
        return {
            "policy": self.policy,
            "collection": self.collection,
            "counts": counts,
            "findings": {kind: {"count": f.count, "lines": f.lines, "lines_omitted": f.count > len(f.lines)}
                         for kind, f in sorted(self.findings.items())},
            "special_tokens": {"checked": list(self.special_tokens), "source": self.special_tokens_source,
                               "found": dict(sorted(self.special_by_token.items()))},
            "near_duplicates": {"threshold": self.threshold, "method": f"MinHash LSH (datasketch), {NUM_PERM} permutations, "
                                f"word 3-grams of the first {NEAR_DUP_WORDS} words",
                                "count": self.near_duplicate_count,
                                "pairs": [{"line": a, "like_line": b} for a, b in self.near_duplicates],
                                "indexed": self.indexed,
                                "index_full_at_line": self.index_full_at},
            "leakage": ({"held_out_conversations": self.held_out.size, "count": self.leak_count,
                         "lines": [{"line": a, "held_out_index": b} for a, b in self.leaks]}
                        if self.held_out is not None else {"held_out_conversations": None,
                                                           "note": "no held-out evaluation set for this collection yet"}),
            "redacted_conversations": self.redacted_lines,
            "values_shown": False,
        }

    def decision_reasons(self) -> list[str]:
        """Reasons to reject under policy ``reject`` (empty: nothing found, or another policy)."""
        if self.policy != "reject":
            return []
        problems = self.problems()
        return [f"DATA_POLICY=reject for collection {self.collection!r}: " + "; ".join(problems)] if problems else []


# --------------------------------------------------------------------------- cost forecast


def cost_forecast(settings: Settings, *, conversations: int, characters: int, tokens_per_conversation: float | None,
                  ) -> dict[str, Any]:
    """Tokens x epochs / throughput x instance price, for the report and the spend guard.

    Tokens come from the sampled token statistics when a tokenizer is configured, else from
    characters / ``CHARS_PER_TOKEN``. Epochs are ``num_train_epochs`` of ``FINETUNE_PARAMS``
    (else 1). Throughput is ``TRAINING_TOKENS_PER_SECOND`` and the price ``INSTANCE_HOURLY_PRICES``
    of the instance type the job runs on (``local`` for the local workspace).
    """
    instance = "local" if settings.ml_backend == "local" else settings.finetune_instance_type
    if tokens_per_conversation is not None:
        tokens = int(conversations * tokens_per_conversation)
        tokens_from = "sampled token counts"
    else:
        tokens = int(characters / CHARS_PER_TOKEN)
        tokens_from = f"characters / {CHARS_PER_TOKEN:g}"
    try:
        epochs = float(settings.finetune_params.get("num_train_epochs", 1))
    except (TypeError, ValueError):
        epochs = 1.0
    throughput = settings.training_tokens_per_second.get(instance)
    price = settings.instance_hourly_prices.get(instance)
    hours = tokens * epochs / float(throughput) / 3600 if throughput else None
    usd = round(hours * float(price), 4) if hours is not None and price is not None else None
    return {"instance_type": instance, "tokens": tokens, "tokens_from": tokens_from, "epochs": epochs,
            "tokens_per_second": throughput, "hourly_price_usd": price,
            "hours": round(hours, 4) if hours is not None else None, "usd": usd,
            "note": None if usd is not None else f"no throughput or price configured for {instance!r}"}


HeldOutLoader = Callable[[Settings, str], "Iterable[list[dict[str, str]]] | None"]


def held_out_for(settings: Settings, collection: str) -> list[list[dict[str, str]]] | None:
    """The collection's held-out evaluation set from ``shared.evaluation`` (issue 24), when it exposes
    ``held_out_conversations(settings, collection)``; None until then or when the collection has none."""
    try:
        import shared.evaluation as evaluation
    except ImportError:
        return None
    loader = getattr(evaluation, "held_out_conversations", None)
    if loader is None:
        return None
    conversations = loader(settings, collection)
    return list(conversations) if conversations is not None else None
