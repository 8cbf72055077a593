"""Deterministic, valid Azure ML names derived from the app's records."""

from __future__ import annotations

import hashlib
import re

_ENDPOINT_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")


def slug(text: str, max_len: int) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s[:max_len].strip("-")


def endpoint_name(model_name: str, version: str) -> str:
    """3-32 chars, letters/digits/hyphens, starting with a letter, deterministic per model version.

    Endpoint names are unique per Azure region, so a short hash of the full name keeps two
    models with the same prefix apart.
    """
    digest = hashlib.sha256(f"{model_name}:{version}".encode()).hexdigest()[:6]
    ver = slug(str(version), 8) or "v"
    stem = slug(model_name, 32 - len(ver) - len(digest) - 3) or "ft"
    if not stem[0].isalpha():
        stem = "m" + stem[: max(0, len(stem) - 1)]
    name = f"{stem}-{ver}-{digest}".replace("--", "-")
    if not _ENDPOINT_RE.match(name):
        raise ValueError(f"cannot derive a valid endpoint name from {model_name!r} {version!r}: {name!r}")
    return name


def is_valid_endpoint_name(name: str) -> bool:
    return bool(_ENDPOINT_RE.match(name)) and "--" not in name
