"""The local workspace's own capacity: at most N fine-tunes train at once, the rest wait in order.

Every fine-tune is a process of its own (job_runner) and each one uses every core it is given,
so two on a small machine slow each other down and more make it worse. A job stays ``queued``
until its runner holds one of N *slots*: an exclusive ``fcntl`` lock on
``<workspace>/slots/slot-<i>.lock`` (i < N), held for the runner's life. The kernel releases the
lock when the process ends in any way (completed, failed, canceled, killed), so a slot can never
leak.

Submission order: :func:`enqueue` (called at submit) appends the job to ``queue.json``; only the
oldest job still waiting may take a free slot. An entry whose job has ended (canceled while
waiting) or whose runner is gone is dropped by the next runner that looks, so a dead runner never
blocks the queue. N comes from the job's spec (``max_parallel_jobs``, the setting
``LOCAL_MAX_PARALLEL_JOBS`` at submit time; 1 for a spec written before the setting existed).
"""

from __future__ import annotations

import fcntl
import logging
import time
from typing import IO, Any

from localworkspace.workspace import Workspace, process_alive, read_json, read_pid_file, write_json
from shared.clock import parse_iso

log = logging.getLogger(__name__)

POLL_S = 0.5
# A waiting job whose runner has not written its pid file this long after submission is gone.
START_GRACE_S = 60.0


def _queue_path(ws: Workspace) -> Any:
    return ws.root / "queue.json"


def enqueue(ws: Workspace, job_name: str) -> int:
    """Record ``job_name`` as waiting, after every job submitted before it; its 1-based position."""
    ws.ensure()
    with ws.lock("queue"):
        queue = read_json(_queue_path(ws)) or {"waiting": []}
        queue["waiting"].append(job_name)
        write_json(_queue_path(ws), queue)
        return len(queue["waiting"])


def waiting(ws: Workspace) -> list[str]:
    """The jobs waiting for a slot, oldest first (as recorded; gone runners are dropped lazily)."""
    return list((read_json(_queue_path(ws)) or {}).get("waiting", []))


def _still_waiting(ws: Workspace, job_name: str, me: str) -> bool:
    if job_name == me:
        return True
    state = read_json(ws.job_state_path(job_name)) or {}
    if state.get("state") != "queued":
        return False
    proc = read_pid_file(ws.job_dir(job_name) / "runner.pid")
    if proc is not None:
        return process_alive(proc)
    try:
        submitted = parse_iso(state.get("submitted_at"))  # a naive time is UTC, never the machine's local time
    except ValueError:
        submitted = None
    age = time.time() - submitted.timestamp() if submitted else float("inf")
    return age < START_GRACE_S


def _try_slot(ws: Workspace, limit: int) -> tuple[int, IO[str]] | None:
    slots = ws.root / "slots"
    slots.mkdir(parents=True, exist_ok=True)
    for index in range(limit):
        fh = open(slots / f"slot-{index}.lock", "w")  # noqa: SIM115 - held open for the runner's life
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            continue
        return index, fh
    return None


class Slot:
    """A held slot; keep the object alive as long as the job trains (the lock goes with the process)."""

    def __init__(self, index: int, handle: IO[str]) -> None:
        self.index = index
        self._handle = handle

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def acquire_slot(ws: Workspace, job_name: str, limit: int, poll_s: float = POLL_S) -> Slot:
    """Wait until ``job_name`` is the oldest waiting job and one of ``limit`` slots is free; take it."""
    limit = max(1, int(limit))
    announced: int | None = None
    while True:
        with ws.lock("queue"):
            queue = read_json(_queue_path(ws)) or {"waiting": []}
            alive = [j for j in queue["waiting"] if _still_waiting(ws, j, job_name)]
            if alive != queue["waiting"]:
                queue["waiting"] = alive
                write_json(_queue_path(ws), queue)
            position = alive.index(job_name) if job_name in alive else 0
            if position == 0:
                taken = _try_slot(ws, limit)
                if taken is not None:
                    if job_name in alive:
                        alive.remove(job_name)
                        queue["waiting"] = alive
                        write_json(_queue_path(ws), queue)
                    log.info("job %s took slot %d of %d", job_name, taken[0] + 1, limit)
                    return Slot(*taken)
        if announced != position:
            announced = position
            ahead = f"{position} job(s) submitted before it still wait" if position else "every slot is busy"
            log.info("job %s queued: at most %d local job(s) train at once; %s", job_name, limit, ahead)
            ws.update_job_state(job_name, expect={"queued"}, queue_position=position + 1)
        time.sleep(poll_s)
