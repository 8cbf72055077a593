"""What one domain call works with: the settings, the ledger and the ML backend (created once per
call from the worker's cached settings unless the caller passes its own, as tests do)."""

from __future__ import annotations

import dataclasses

from shared.backends import get_backend
from shared.backends.base import MLBackend
from shared.ledger import Ledger
from shared.settings import Settings, get_settings


@dataclasses.dataclass
class Context:
    settings: Settings
    ledger: Ledger
    backend: MLBackend


def context(settings: Settings | None = None, ledger: Ledger | None = None, backend: MLBackend | None = None) -> Context:
    s = settings or get_settings()
    return Context(s, ledger or Ledger.from_settings(s), backend or get_backend(s))
