"""What a worker read moments ago, reused instead of read again (the same event, the same reconcile step)."""

from __future__ import annotations

import dataclasses
from typing import Any

REGISTRY_CACHE_S = 3600.0  # the registry's "latest" model and component change rarely
REUSE_S = 60.0  # register_model reuses the job get_job has just read; set_traffic the endpoint get_endpoint read


@dataclasses.dataclass
class Cached:
    value: Any
    at: float
