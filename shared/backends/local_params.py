"""FINETUNE_PARAMS checked for the local backend when the settings are read (fail fast, not at upload).

The names and types are the local trainer's (``localworkspace.trainer``, which imports torch only
inside the functions that train, so reading its tables is cheap).
"""

from __future__ import annotations

from typing import Any


def unknown_local_params(params: dict[str, Any]) -> str | None:
    """Why the local workspace cannot take ``params`` (None when it can)."""
    from localworkspace.trainer import ParamError, resolve_params

    try:
        resolve_params(params)
    except ParamError as exc:
        return str(exc)
    return None
