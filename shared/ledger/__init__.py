"""The ledger: every record the app keeps (datasets, jobs, models, endpoints, routes) and its state.

:mod:`shared.ledger.records` is the state machine (kinds, states, allowed transitions, owners);
:mod:`shared.ledger.store` the Table Storage store with ETag-conditional writes and the one
conflict-retry helper.
"""

from shared.ledger.records import DATASET, ENDPOINT, JANITOR, JOB, MODEL, ROUTE
from shared.ledger.store import (
    ConflictError,
    InvalidTransitionError,
    Ledger,
    Record,
    check_key,
    iso,
    parse_iso,
    retry_on_conflict,
    utcnow,
)

__all__ = [
    "DATASET", "ENDPOINT", "JANITOR", "JOB", "MODEL", "ROUTE",
    "ConflictError", "InvalidTransitionError", "Ledger", "Record", "check_key", "iso", "parse_iso",
    "retry_on_conflict", "utcnow",
]
