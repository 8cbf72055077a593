"""The data quality gate: what an upload holds besides valid conversations, before money is spent.

Computed in preparation's own streaming pass (``shared.datasets.preparation`` calls
:meth:`QualityScan.observe` for every valid, distinct conversation), in bounded memory:

- **personal data and secrets** in content: e-mail addresses, phone numbers, card numbers (Luhn
  checked), IBANs (ISO 13616 mod-97 checked), cloud keys and tokens (AWS access keys, GitHub,
  Slack, Google API, OpenAI-style ``sk-`` keys, Azure storage account keys and SAS signatures,
  JWTs) and private key blocks: counted by kind with the line numbers, never the values;
- the **base model's special tokens** inside content (``<|im_start|>`` in SmolLM2's chat
  template, ``<|end|>`` in Phi-3's, ...): they break the chat template at training time;
- **near-duplicate conversations** within the upload (MinHash LSH with datasketch's permutations
  and banding, hashed in batches by :mod:`shared.datasets.neardup`: word 3-grams of the conversation's first
  ``NEAR_DUP_WORDS`` words), and **leakage**: conversations equal or near-equal to one of the
  collection's held-out evaluation set;
- a **cost forecast**: :func:`cost_forecast` (tokens x epochs / throughput x instance price).

``DATA_POLICY`` (per collection) says what a finding does: ``report`` (only reported),
``redact`` (the prepared copy has every personal datum and secret replaced by
``[REDACTED:<kind>]`` and every special token by ``[SPECIAL_TOKEN]``; the raw upload is never
changed) or ``reject`` (any finding rejects the upload, with the counts as the reason).

Memory: the near-duplicate index holds one band key per band per conversation up to
``NEAR_DUP_INDEX_MAX`` conversations (then later ones are still checked against it, not added:
the report says so), the rest is counters, at most ``MAX_LINES_LISTED`` line numbers per kind and
the shingle prefix (at most ``neardup.PREFIX_BYTES_MAX`` bytes, whatever the conversation's size)
of at most ``BATCH`` conversations waiting for their signatures.

Speed (``bench/prepare.py``): the scans run on the digest's JSON bytes preparation already made
(nothing is encoded twice): one ``bytes.translate`` keeps the bytes a detector can start from,
then a few scans of those (``@``, the digit count, the all-capital literals, the special tokens'
first bytes) and a comparison of each other literal around its anchor byte
(:func:`shared.datasets.sensitive.may_hold_sensitive`); the detectors' regexes run only where
that says a finding is possible; the MinHash words come from a prefix of the text; signatures
are computed ``BATCH`` conversations at a time in numpy (near-duplicates and leaks are recorded
in order at each flush, and before any count or report is read).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import xxhash

from shared.datasets import neardup
from shared.datasets.digest import conversation_digest
from shared.datasets.sensitive import PII_KINDS, SECRET_KINDS, find_sensitive, kept_bytes_table, may_hold_sensitive, redact
from shared.settings import Settings

POLICIES = ("report", "redact", "reject")
MAX_LINES_LISTED = 50
NEAR_DUP_WORDS = neardup.NEAR_DUP_WORDS
BATCH = 256  # conversations whose MinHash signatures are computed together
NEAR_DUP_INDEX_MAX = 30_000
_dumps = orjson.dumps
_digest = xxhash.xxh3_128_intdigest  # of the digest bytes: shared.datasets.digest.conversation_digest
# Characters per token when no tokenizer is configured (English chat text; the report says so).
CHARS_PER_TOKEN = 4.0

# --------------------------------------------------------------------------- special tokens

# Published special tokens of the Azure ML foundation models this app fine-tunes (the
# tokenizer's added tokens with "special": true; docs/data-quality.md names the sources). The
# local base models' come from their own tokenizer.json.

# Phi-4 (the default FOUNDATION_MODEL_NAME): ids 100256-100351 of its cl100k-based vocabulary are
# special; the named ones, and <|dummy_N|> for the rest (dummy_0-3 named among them, dummy_4-87
# after <|im_sep|> with <|endofprompt|> at 100276). Source: pytorch/torchtune,
# torchtune/models/phi4/_tokenizer.py (PHI4_SPECIAL_TOKENS), commit 02ef6586.
_PHI4_SPECIAL_TOKENS = ("<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|im_start|>",
                        "<|im_end|>", "<|im_sep|>", "<|endofprompt|>", *(f"<|dummy_{i}|>" for i in range(88)))
PUBLISHED_SPECIAL_TOKENS: dict[str, tuple[str, ...]] = {
    "Phi-4": _PHI4_SPECIAL_TOKENS,
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


def conversation_minhash(contents: Sequence[str]) -> Any | None:
    """MinHash signature (:mod:`shared.datasets.neardup`) of a conversation: word 3-grams of its first
    ``NEAR_DUP_WORDS`` words, lower-cased (bounded work per row). None when it has fewer than 3 words."""
    return neardup.signatures([neardup.shingle_text(contents)])[0]


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
        self.digests: dict[int, int] = {}
        self.lsh = neardup.LshIndex(threshold)
        self.size = 0
        texts: list[bytes] = []
        for i, messages in enumerate(held_out):
            contents = [str(m.get("content", "")).strip() for m in messages]
            roles = [str(m.get("role", "")).strip().lower() for m in messages]
            self.digests.setdefault(conversation_digest(roles, contents), i)
            texts.append(neardup.shingle_text(contents))
            self.size += 1
            if len(texts) == BATCH:
                self._index(texts, i + 1 - len(texts))
                texts = []
        self._index(texts, self.size - len(texts))

    def _index(self, texts: list[bytes], first: int) -> None:
        matrix, rows = neardup.signature_matrix(texts)
        self.lsh.query_insert_many((rows + first).tolist(), matrix, len(rows))

    def exact(self, contents: list[str], roles: list[str]) -> int | None:
        return self.digests.get(conversation_digest(roles, contents))

    def near(self, signature: Any) -> int | None:
        return None if signature is None else self.lsh.query(signature)

    def match(self, contents: list[str], roles: list[str]) -> int | None:
        hit = self.exact(contents, roles)
        return hit if hit is not None else self.near(conversation_minhash(contents))


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
        # a special token's first byte, as UTF-8 and as JSON (observe scans the digest's JSON bytes)
        self._special_first = tuple(sorted({t[0].encode("utf-8") for t in special_tokens}
                                           | {_dumps(t)[1:2] for t in special_tokens}))
        self._kept_table = kept_bytes_table(b"".join(self._special_first))
        self.findings: dict[str, _Finding] = {}
        self.special_by_token: dict[str, int] = {}
        self.threshold = settings.near_duplicate_threshold
        self.lsh = neardup.LshIndex(self.threshold)
        self._pending: list[tuple[int, bytes, int | None]] = []  # (line, shingle text, exact leak)
        self.indexed = 0
        self.index_full_at: int | None = None
        self.near_duplicates: list[tuple[int, int]] = []  # (line, the earlier line it resembles), first MAX_LINES_LISTED
        self.near_duplicate_count = 0
        self.held_out = HeldOutIndex(held_out, self.threshold) if held_out is not None else None
        self.leaks: list[tuple[int, int]] = []
        self.leak_count = 0
        self.redacted_lines = 0

    def _finding(self, kind: str) -> _Finding:
        found = self.findings.get(kind)
        if found is None:
            found = self.findings[kind] = _Finding()
        return found

    def observe(self, line: int, roles: list[str], contents: list[str], encoded: bytes | None = None) -> list[str]:
        """``encoded``: the conversation's digest bytes (``orjson.dumps((roles, contents))``) when the
        caller has them (preparation does): the scans run on them, so nothing is encoded twice."""
        redacting = self.policy == "redact"
        out: list[str] | None = None
        special = self._special
        data = encoded if encoded is not None else _dumps((roles, contents))
        kept = data.translate(None, self._kept_table)
        if kept and (may_hold_sensitive(data, kept) or (
                special is not None and any(ch in kept for ch in self._special_first) and any(map(special.search, contents)))):
            indices: Iterable[int] = range(len(contents))
        else:
            indices = ()
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
        leak = self.held_out.digests.get(_digest(data)) if self.held_out is not None else None
        self._pending.append((line, neardup.shingle_text(contents), leak))
        if len(self._pending) >= BATCH:
            self._flush()
        return out if out is not None else contents

    def _flush(self) -> None:
        """Near-duplicates and leaks of the conversations observed since the last flush, in order
        (their MinHash signatures in one batch: :func:`shared.datasets.neardup.signature_matrix`)."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        matrix, rows = neardup.signature_matrix([text for _, text, _ in pending])
        lines = [pending[i][0] for i in rows.tolist()]
        n_insert = max(0, min(len(lines), NEAR_DUP_INDEX_MAX - self.indexed))
        if n_insert < len(lines) and self.index_full_at is None:
            self.index_full_at = lines[n_insert]
        self.indexed += n_insert
        for line, similar in zip(lines, self.lsh.query_insert_many(lines, matrix, n_insert), strict=True):
            if similar is not None:
                self.near_duplicate_count += 1
                if len(self.near_duplicates) < MAX_LINES_LISTED:
                    self.near_duplicates.append((line, similar))
        if self.held_out is not None:
            near = dict(zip(lines, self.held_out.lsh.query_many(matrix), strict=True))
            for line, _, leak in pending:
                hit = leak if leak is not None else near.get(line)
                if hit is not None:
                    self.leak_count += 1
                    if len(self.leaks) < MAX_LINES_LISTED:
                        self.leaks.append((line, hit))

    # ------------------------------------------------------------------ the report

    def counts(self) -> dict[str, int]:
        """Counts by kind (for the ledger, ``status`` and the dashboard)."""
        self._flush()
        pii = sum(self.findings[k].count for k in PII_KINDS if k in self.findings)
        secrets = sum(self.findings[k].count for k in SECRET_KINDS if k in self.findings)
        special = self.findings["special_token"].count if "special_token" in self.findings else 0
        return {"personal_data": pii, "secrets": secrets, "special_tokens": special,
                "near_duplicates": self.near_duplicate_count, "leaks": self.leak_count}

    def problems(self) -> list[str]:
        """One sentence per kind of finding, with counts and lines (never values)."""
        self._flush()
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
        counts = self.counts()  # flushes
        return {
            "policy": self.policy,
            "collection": self.collection,
            "counts": counts,
            "findings": {kind: {"count": f.count, "lines": f.lines, "lines_omitted": f.count > len(f.lines)}
                         for kind, f in sorted(self.findings.items())},
            "special_tokens": {"checked": list(self.special_tokens), "source": self.special_tokens_source,
                               "found": dict(sorted(self.special_by_token.items()))},
            "near_duplicates": {"threshold": self.threshold, "method": f"MinHash LSH (bands {self.lsh.b} x {self.lsh.r}), "
                                f"{neardup.NUM_PERM} permutations, word 3-grams of the first {NEAR_DUP_WORDS} words",
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
