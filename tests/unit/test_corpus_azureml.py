"""A corpus job on the Azure ML backend: the real azure-ai-ml SDK against intercepted HTTP
(tests/azureml_fakes.py): the corpus files are passed as a dataset's are, and the job and the
model it registers carry the lineage (collection, corpus id, dataset ids) as tags."""

from __future__ import annotations

from typing import Any

import pytest
import responses

from shared.backends.azureml.finetune_parameters import INTERFACE_PATH
from shared.datasets.corpus import corpus_id_for, corpus_prefix
from shared.training.submission import corpus_request
from tests.azureml_fakes import FakeAzureML, azure_settings, make_backend

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:marshmallow")


@pytest.fixture
def azure() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeAzureML(rsps, str(INTERFACE_PATH))


def test_corpus_files_and_lineage_on_the_job_and_the_model(azure) -> None:
    # The app's settings and backend as the Azure ML contract tests make them: the storage account the
    # fake's datastore is on, and a day the cookbook's model version was still current.
    backend = make_backend(azure_settings())
    settings = backend.settings
    ids = ("support-bot-day1-0123456789abcdef", "support-bot-day2-fedcba9876543210")
    corpus_id = corpus_id_for(ids, settings.test_fraction)
    prefix = corpus_prefix("support-bot", corpus_id)
    request = corpus_request(settings, "support-bot", corpus_id, ids,
                             {"train_blob": prefix + "train.jsonl", "test_blob": prefix + "test.jsonl"})
    job = backend.submit_finetune(request)

    (put,) = azure.calls("PUT", r"/jobs/")
    props = put.body["properties"]
    inputs = next(iter(props["jobs"].values()))["inputs"]
    datastore = f"azureml://datastores/{settings.azure_ml_datastore}/paths/"
    assert inputs["train_file_path"] == {"uri": datastore + prefix + "train.jsonl", "job_input_type": "uri_file"}
    assert inputs["test_file_path"]["uri"] == datastore + prefix + "test.jsonl"
    assert props["tags"]["collection"] == "support-bot" and props["tags"]["corpus-id"] == corpus_id
    assert props["tags"]["dataset-ids"] == ",".join(ids)
    assert props["tags"]["model_name"] == f"{settings.model_name}-support-bot"

    azure.set_job_status(job, "Completed")
    backend.register_model(job, request.model_name)
    (model_put,) = azure.calls("PUT", r"/models/")
    tags = model_put.body["properties"]["tags"]
    assert tags["collection"] == "support-bot" and tags["corpus-id"] == corpus_id and tags["dataset-ids"] == ",".join(ids)
