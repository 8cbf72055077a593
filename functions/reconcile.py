"""Timer trigger: finish what job events started or missed (lost events, deployments rolling out).

Also run on demand by the local host: ``POST /admin/functions/reconcile``.
"""

from __future__ import annotations

import logging

import azure.functions as func

from shared.context import context
from shared.observability import telemetry
from shared.reconcile import run as reconciliation

log = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.function_name("reconcile")
@bp.timer_trigger(schedule="%RECONCILE_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def reconcile(timer: func.TimerRequest) -> None:
    if timer.past_due:
        log.info("reconcile is running late (past due)")
    with telemetry.reconcile_span():
        summary = reconciliation.reconcile(ctx=context())
    log.info("reconcile summary: %s", summary)
