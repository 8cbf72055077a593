"""Queue trigger: submit a collection's corpus job when its coalescing window closes (see shared.training.due)."""

import logging

import azure.functions as func

from shared.training.delivery import submit_when_due
from shared.training.due import SUBMISSION_QUEUE

log = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.function_name("submit_due_collection")
@bp.queue_trigger(arg_name="msg", queue_name=SUBMISSION_QUEUE, connection="AzureWebJobsStorage")
def submit_due_collection(msg: func.QueueMessage) -> None:
    outcome = submit_when_due(msg.get_body())
    log.info("scheduled submission %s: %s", msg.get_body()[:200], outcome)
