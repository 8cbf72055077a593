"""A backend that records fine-tune submissions and reports each job's run times as a test sets them."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from shared.backends.base import COMPLETED, RUNNING, FineTuneRequest, JobInfo


class JobsBackend:
    """Records submissions; reports each job's run times as a test sets them."""

    name = "recording"

    def __init__(self) -> None:
        self.requests: list[FineTuneRequest] = []
        self.times: dict[str, tuple[datetime | None, datetime | None]] = {}
        self._lock = threading.Lock()

    @property
    def workspace_id(self) -> str:
        return "/subscriptions/x/resourceGroups/y/providers/Microsoft.MachineLearningServices/workspaces/recording"

    def submit_finetune(self, request: FineTuneRequest) -> str:
        with self._lock:
            self.requests.append(request)
            return f"ftjob-{len(self.requests):03d}"

    def get_job(self, job_name: str) -> JobInfo:
        started, ended = self.times.get(job_name, (None, None))
        return JobInfo(job_name, COMPLETED if ended else RUNNING, started_at=started, ended_at=ended)

    def __getattr__(self, name: str) -> Any:
        raise NotImplementedError(name)
