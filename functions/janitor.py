"""Timer trigger ``delete_idle_endpoints``: delete online endpoints nobody calls (shared.janitor.run)."""

import logging

import azure.functions as func

from shared.context import context
from shared.janitor import run as janitor

log = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.timer_trigger(schedule="%JANITOR_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
def delete_idle_endpoints(timer: func.TimerRequest) -> None:
    if timer.past_due:
        # A missed run (host down, scale-in): running now is still right, the policy reads clocks, not ticks.
        log.warning("delete_idle_endpoints is past due; running now")
    # Exceptions propagate so the host records the run as failed; the next tick tries again.
    report = janitor.delete_idle_endpoints(ctx=context())
    log.info("delete_idle_endpoints: %s", report.summary())
