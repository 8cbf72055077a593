"""Queue trigger: follow an in-flight deployment or deletion until it settles (see shared.endpoints.followup
and shared.reconcile.settle)."""

import logging

import azure.functions as func

from shared.endpoints.followup import FOLLOWUP_QUEUE
from shared.reconcile.settle import follow_up

log = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.function_name("follow_up_endpoint")
@bp.queue_trigger(arg_name="msg", queue_name=FOLLOWUP_QUEUE, connection="AzureWebJobsStorage")
def follow_up_endpoint(msg: func.QueueMessage) -> None:
    outcome = follow_up(msg.get_body())
    log.info("follow-up of %s: %s", msg.get_body()[:200], outcome)
