"""What one delivery of an uploaded blob did (the blob trigger's and the submission's shared answer)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class DatasetOutcome:
    """What one delivery did. ``status``: ignored, missing, rejected, submitted, already_rejected,
    already_submitted, submission_in_progress, eval (a golden file under ``<collection>/eval/``:
    evaluated on, never trained on), already_eval; corpus mode also: pending (due later),
    waiting_for_job (a job of the collection runs), held (the spend guard), already_retired."""

    status: str
    blob_name: str
    dataset_id: str | None = None
    job_name: str | None = None
    reasons: tuple[str, ...] = ()
    counts: dict[str, Any] = dataclasses.field(default_factory=dict)
