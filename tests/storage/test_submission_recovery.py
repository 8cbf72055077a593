"""A delivery killed between claiming a dataset's submission and submitting it: the next reconcile
submits it, exactly once.

The delivery runs the real ``prepare_chat_data`` function in its own process against the
session's Azurite; its worker is killed (SIGKILL) inside the backend's submit call, so the ledger
holds the claim and no job. The real ``reconcile`` timer function then finishes the submission
once the claim's lease has passed, and a second run changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time

import pytest
from azure.functions.timer import TimerRequest

from functions import reconcile as reconcile_module
from shared.backends import use_backend
from shared.datasets.intake import dataset_id_for
from shared.ledger import DATASET, JOB, Ledger
from shared.settings import use_settings
from shared.storage import blob_service
from tests.fakes.uploads import GOOD
from tests.fakes.workspace import InMemoryWorkspace
from tests.support import ROOT, user_function

pytestmark = pytest.mark.storage

# The delivery's worker: the real blob-trigger function, with a backend whose submit call is where
# the process dies (a host crash, an OOM kill, a scale-in).
DELIVERY = """
import json, os, signal, sys
from azure.storage.blob import BlobClient
import azure.functions as func
from devhost.app_index import functions_of
from functions import prepare_chat_data
from shared.backends import use_backend
from shared.settings import load_settings, use_settings

env = json.loads(sys.argv[1])
settings = load_settings(environ=env)
use_settings(settings)

class DiesInSubmit:
    name = "dies-in-submit"
    workspace_id = settings.workspace_resource_id
    def submit_finetune(self, request):
        os.kill(os.getpid(), signal.SIGKILL)

use_backend(DiesInSubmit(), settings)
app = func.FunctionApp()
app.register_functions(prepare_chat_data.bp)
(fn,) = [f for f in functions_of(app) if f.get_function_name() == "prepare_chat_data"]
fn.get_user_function()(BlobClient.from_connection_string(env["AzureWebJobsStorage"], env["CHAT_DATA_CONTAINER"], sys.argv[2]))
print("the delivery was not killed")
"""


def test_a_delivery_killed_between_claim_and_submission_is_submitted_by_the_next_reconcile_once(storage_settings):
    lease_s = 2
    # Upload mode: the upload's own delivery claims and submits (corpus mode's collection claim is
    # covered by tests/test_coalescing_storage.py).
    s = storage_settings.replace(submit_claim_lease_s=lease_s, training_mode="upload")
    env = {"AzureWebJobsStorage": s.storage_connection, "CHAT_DATA_CONTAINER": s.chat_data_container,
           "PREPARED_CONTAINER": s.prepared_container, "LEDGER_TABLE": s.ledger_table,
           "LOCAL_WORKSPACE_DIR": s.local_workspace_dir, "LOCAL_BASE_MODEL": s.local_base_model,
           "SUBMIT_CLAIM_LEASE_SECONDS": str(lease_s), "TRAINING_MODE": "upload"}
    name = "team/killed.jsonl"
    blob_service(s).get_blob_client(s.chat_data_container, name).upload_blob(GOOD, overwrite=True)

    delivery = subprocess.run([sys.executable, "-c", DELIVERY, json.dumps(env), name], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert delivery.returncode == -signal.SIGKILL, (delivery.returncode, delivery.stdout, delivery.stderr[-2000:])

    ledger = Ledger.from_settings(s)
    dataset_id = dataset_id_for(name, hashlib.sha256(GOOD).hexdigest())
    claimed = ledger.get(DATASET, dataset_id)
    assert claimed is not None and claimed.state == "accepted" and claimed.get("submit_claim"), claimed
    assert ledger.list(JOB) == []

    workspace = InMemoryWorkspace(s.workspace_resource_id)
    use_settings(s)
    use_backend(workspace, s)
    run_reconcile = user_function(reconcile_module, "reconcile")
    run_reconcile(TimerRequest(past_due=False))  # the claim is still live: a delivery may be submitting
    assert workspace.requests == [] and ledger.get(DATASET, dataset_id).state == "accepted"

    time.sleep(lease_s + 0.5)
    run_reconcile(TimerRequest(past_due=False))
    run_reconcile(TimerRequest(past_due=False))
    assert [r.dataset_id for r in workspace.requests] == [dataset_id]  # submitted once
    record = ledger.get(DATASET, dataset_id)
    assert record.state == "submitted" and record.get("job_name") == "ftjob-001" and not record.get("submit_claim")
    assert [j.id for j in ledger.list(JOB)] == ["ftjob-001"]
