"""Model version ordering: the one rule for "which version is newer"."""

from __future__ import annotations


def version_key(version: str | None) -> tuple[int, int | str]:
    """Sort key: registry versions are integers in practice and compare as numbers; any other
    text sorts before every number and compares as text; no version sorts first of all."""
    text = str(version or "")
    if text.isdigit():
        return (2, int(text))
    return (1, text) if text else (0, "")


def is_newer(version: str | None, than: str | None) -> bool:
    """Whether ``version`` is newer than ``than`` (anything is newer than no version)."""
    return version_key(version) > version_key(than)


def latest(versions: list[str]) -> str | None:
    return max(versions, key=version_key) if versions else None
