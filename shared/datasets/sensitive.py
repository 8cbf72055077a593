"""Personal data and secrets in chat content, for the data quality gate (:mod:`shared.datasets.quality`):
e-mail addresses, phone numbers, card numbers (Luhn), IBANs (ISO 13616 mod-97), cloud keys and
tokens, private key blocks. Spans only: callers count and redact, and never show a value."""

from __future__ import annotations

import re

# --------------------------------------------------------------------------- personal data and secrets

# kind -> (pattern, validator of the match or None). Each pattern is cheap to scan for: a
# literal or a narrow first character, so a conversation without any costs a few passes in C.
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}")
# International (+CC ...) or North American (NXX NXX XXXX) numbers, not part of a longer digit run.
_PHONE = re.compile(r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){1,2}[ .-]?\d{3,4}[ .-]?\d{3,4}"
                    r"|\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4})(?![ .-]?\d)(?!\w)")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IBAN = re.compile(r"(?<![A-Z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?![A-Z0-9])")
# kind -> (literals, pattern): every match of the pattern contains one of the literals, so the
# pattern runs only on text holding one (a substring search in C); prose holds almost none.
_SECRETS: dict[str, tuple[tuple[str, ...], re.Pattern[str]]] = {
    "aws_access_key": (("AKIA", "ASIA"), re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Z0-9])")),
    "github_token": (("_",), re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})")),
    "slack_token": (("xox",), re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}")),
    "google_api_key": (("AIza",), re.compile(r"\bAIza[0-9A-Za-z_-]{35}")),
    "openai_key": (("sk-",), re.compile(r"\bsk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}")),
    "azure_storage_key": (("AccountKey=",), re.compile(r"AccountKey=[A-Za-z0-9+/]{40,}={0,2}")),
    "azure_sas_signature": (("sig=",), re.compile(r"[?&]sig=[A-Za-z0-9%+/]{20,}={0,2}")),
    "jwt": (("eyJ",), re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    # the whole block where its END line follows (so redaction removes the key, not only the header)
    "private_key": (("-----BEGIN",), re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
                                                r"(?:[A-Za-z0-9+/=\s:,-]{0,16384}?-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)?")),
}
PII_KINDS = ("email", "phone", "card_number", "iban")
SECRET_KINDS = tuple(_SECRETS)
# The whole-conversation check (may_hold_sensitive) keeps, in one bytes.translate pass, only the
# bytes below; a literal made only of kept bytes is then searched for in what was kept (it is
# there if it was in the text: nothing between its bytes is dropped), a few hundred bytes instead
# of the whole text.
_UPPER = bytes(range(ord("A"), ord("Z") + 1))
_KEPT_LITERALS = (b"AKIA", b"ASIA", b"-----BEGIN")
# Literals with lower-case letters are compared only around an anchor byte: one rare in prose
# that every match of the secret's pattern holds at a fixed place relative to the literal.
# anchor -> ((literal, where the literal starts relative to the anchor), ...).
_ANCHORS: tuple[tuple[bytes, tuple[tuple[bytes, int], ...]], ...] = (
    (b"_", ((b"_", 0),)),
    # "xox[abprs]-": the hyphen 4 bytes after the literal's start (not its "x": prose is full of them)
    (b"-", ((b"xox", -4), (b"sk-", -2))),
    (b"z", ((b"AIza", -2),)),
    (b"=", ((b"AccountKey=", -10), (b"sig=", -3))),
    (b"J", ((b"eyJ", -2),)),
)
# Past this many occurrences of an anchor, its literals are searched for in the whole text instead.
MAX_ANCHOR_VISITS = 8
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


def _digit_count(data: bytes) -> int:
    return len(data) - len(data.translate(None, _DIGITS))


def kept_bytes_table(extra: bytes = b"") -> bytes:
    """The ``delete`` argument of ``bytes.translate`` keeping only the bytes :func:`may_hold_sensitive`
    looks at (``@``, digits, upper-case letters, ``-``, the anchors) and ``extra``: one pass in C
    leaves a few bytes to scan."""
    keep = set(b"@" + _DIGITS + _UPPER + b"".join(_KEPT_LITERALS) + b"".join(anchor for anchor, _ in _ANCHORS) + extra)
    return bytes(c for c in range(256) if c not in keep)


_KEPT = kept_bytes_table()


def may_hold_sensitive(data: bytes, kept: bytes | None = None) -> bool:
    """Whether UTF-8 ``data`` (text, or JSON of it) can hold anything :func:`find_sensitive` finds:
    an ``@`` (e-mail), at least ``MIN_DIGITS`` digits (phone, card, IBAN), or a secret's literal.

    ``kept`` is ``data.translate(None, kept_bytes_table(...))`` when the caller has it. One pass
    in C over ``data``, then scans of the few bytes kept (upper-case-only literals are searched
    for there), and a literal with lower-case letters compared only where its anchor byte is (a
    memchr each; a substring search of the whole text past ``MAX_ANCHOR_VISITS``).
    Never says no where a detector would find something: JSON escapes add only backslashes, letters
    and digits, and no literal holds an escaped character."""
    if kept is None:
        kept = data.translate(None, _KEPT)
    if not kept:
        return False
    if b"@" in kept or _digit_count(kept) >= MIN_DIGITS:
        return True
    for literal in _KEPT_LITERALS:
        if literal in kept and literal in data:
            return True
    for anchor, needles in _ANCHORS:
        count = kept.count(anchor)
        if not count:
            continue
        if count > MAX_ANCHOR_VISITS:
            if any(literal in data for literal, _ in needles):
                return True
            continue
        at = data.find(anchor)
        while at >= 0:
            for literal, offset in needles:
                if at + offset >= 0 and data.startswith(literal, at + offset):
                    return True
            at = data.find(anchor, at + 1)
    return False


def find_sensitive(text: str) -> list[tuple[str, int, int]]:
    """``(kind, start, end)`` of each personal datum or secret in ``text`` (validated where a checksum exists)."""
    found: list[tuple[str, int, int]] = []
    if "@" in text:
        found.extend(("email", m.start(), m.end()) for m in _EMAIL.finditer(text))
    if _digit_count(text.encode("utf-8", "surrogatepass")) >= MIN_DIGITS:
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
    for kind, (literals, pattern) in _SECRETS.items():
        if any(lit in text for lit in literals):
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
