"""Blob trigger: a chat data file uploaded to the chat-data container -> prepared dataset -> fine-tune.

Event Grid-sourced (the only blob trigger the Flex Consumption plan supports) and bound as an
SDK type: the function receives an ``azure.storage.blob.BlobClient`` and streams the blob,
never holding the file in memory. Bad data is a handled outcome (reported, never submitted);
only infrastructure errors raise, so the host retries and finally poisons the blob.
"""

# No `from __future__ import annotations` here: the worker reads the parameter's annotation
# object to recognise the SDK type (blob.BlobClient); a string annotation would hide it.
import logging

import azure.functions as func
import azurefunctions.extensions.bindings.blob as blob

from shared.context import context
from shared.datasets.intake import prepare_uploaded_blob
from shared.observability import telemetry

log = logging.getLogger(__name__)

bp = func.Blueprint()


@bp.function_name("prepare_chat_data")
@bp.blob_trigger(arg_name="client", path="%CHAT_DATA_CONTAINER%/{name}", connection="AzureWebJobsStorage",
                 source=func.BlobSource.EVENT_GRID)
def prepare_chat_data(client: blob.BlobClient) -> None:
    with telemetry.upload_span(client.blob_name) as span:
        outcome = prepare_uploaded_blob(client, ctx=context())
        span.outcome(outcome)
    if outcome.status == "ignored":
        log.info("ignored blob %r: not .jsonl, .jsonl.gz or .parquet", outcome.blob_name)
    elif outcome.status == "missing":
        log.warning("blob %r was deleted before it could be read", outcome.blob_name)
    elif outcome.status == "rejected":
        log.warning("dataset %s rejected: %s", outcome.dataset_id, "; ".join(outcome.reasons))
    else:
        log.info("dataset %s from %r: %s (job %s)", outcome.dataset_id, outcome.blob_name, outcome.status, outcome.job_name)
