"""The post-deploy step (scripts/azure_postdeploy.py) against intercepted ARM.

The real management SDKs (azure-mgmt-web, azure-mgmt-eventgrid) send their real requests; a
stateful fake answers them in the published shapes (tests/fixtures/azure-arm/README.md): the
Function App, its functions list and host keys, and Event Grid system-topic subscriptions (what a
PUT stores, a later GET returns, without the key; getFullUrl returns the full URL). Every PUT
body is also checked against the Bicep type definitions of the subscription resource.
"""

from __future__ import annotations

from typing import Any

import pytest
import responses

from scripts import azure_postdeploy as postdeploy
from tests.azureml_fakes import FakeCredential
from tests.bicep_checks import check_rest_body
from tests.fakes.arm import (
    APP,
    ENV,
    EVENTGRID_API,
    HOST,
    STORAGE_TOPIC,
    SUBSCRIPTION_TYPE,
    WORKSPACE_TOPIC,
    FakeArm,
    fixture,
)


@pytest.fixture
def arm() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeArm(rsps)


def run(**kwargs: Any) -> postdeploy.Outcome:
    sleeps: list[float] = kwargs.pop("sleeps", [])
    target = postdeploy.DeployTarget.from_env(ENV)
    return postdeploy.run(target, FakeCredential(), sleep=sleeps.append, delay_s=kwargs.pop("delay_s", 5.0), **kwargs)


def test_first_run_waits_for_the_key_then_creates_the_three_subscriptions(arm: FakeArm) -> None:
    arm.functions_after = 1  # not indexed on the first check
    arm.key_after = 2  # keys missing on the first two key reads
    sleeps: list[float] = []
    outcome = run(sleeps=sleeps)
    assert sleeps == [5.0, 5.0, 5.0], "expected three waits: functions missing once, keys missing twice"
    assert sorted(outcome.created) == sorted(
        [f"{STORAGE_TOPIC}/chat-data-blob-created", f"{WORKSPACE_TOPIC}/job-run-completed", f"{WORKSPACE_TOPIC}/job-run-failed"]
    )
    assert outcome.updated == [] and outcome.unchanged == []
    # no subscription is written before the key exists
    first_put = next(i for i, r in enumerate(arm.requests) if r[0] == "PUT")
    key_reads = [i for i, r in enumerate(arm.requests) if r[1].endswith("/listkeys")]
    assert key_reads[-1] < first_put and len(key_reads) == 3

    bodies = {r[1].rsplit("/", 1)[1]: r[2] for r in arm.puts()}
    blob = bodies["chat-data-blob-created"]["properties"]
    assert blob["destination"] == {
        "endpointType": "WebHook",
        "properties": {
            "endpointUrl": f"https://{HOST}/runtime/webhooks/blobs?functionName=Host.Functions.prepare_chat_data&code=blob-key-1",
            "maxEventsPerBatch": 1,
            "preferredBatchSizeInKilobytes": 64,
        },
    }
    assert blob["filter"]["includedEventTypes"] == ["Microsoft.Storage.BlobCreated"]
    assert blob["filter"]["subjectBeginsWith"] == "/blobServices/default/containers/chat-data/blobs/"
    assert blob["filter"]["advancedFilters"] == [
        {"operatorType": "StringIn", "key": "data.api", "values": ["PutBlob", "PutBlockList", "CopyBlob", "FlushWithClose"]}
    ]
    done = bodies["job-run-completed"]["properties"]
    assert done["destination"]["properties"]["endpointUrl"] == f"https://{HOST}/runtime/webhooks/eventgrid?functionName=on_job_event&code=eg-key-1"
    assert done["filter"]["includedEventTypes"] == ["Microsoft.MachineLearningServices.RunCompleted"]
    assert "advancedFilters" not in done["filter"]
    failed = bodies["job-run-failed"]["properties"]
    assert failed["filter"]["includedEventTypes"] == ["Microsoft.MachineLearningServices.RunStatusChanged"]
    assert failed["filter"]["advancedFilters"] == [{"operatorType": "StringIn", "key": "data.runStatus", "values": ["Failed", "Canceled"]}]
    for name, body in bodies.items():
        assert body["properties"]["eventDeliverySchema"] == "EventGridSchema"
        problems = check_rest_body(SUBSCRIPTION_TYPE, EVENTGRID_API, body, where=f"PUT {name}")
        assert not problems, "\n".join(problems)


def test_second_run_makes_no_write(arm: FakeArm) -> None:
    run()
    writes_after_first = len(arm.writes())
    assert writes_after_first == 3
    outcome = run()
    assert arm.writes()[writes_after_first:] == [], "the second run wrote something"
    assert outcome.created == [] and outcome.updated == [] and len(outcome.unchanged) == 3


def test_a_rotated_key_updates_the_subscriptions_that_use_it(arm: FakeArm) -> None:
    run()
    arm.system_keys["blobs_extension"] = "blob-key-2"
    outcome = run()
    assert outcome.updated == [f"{STORAGE_TOPIC}/chat-data-blob-created"]
    assert len(outcome.unchanged) == 2
    (put,) = arm.puts()[3:]
    assert put[2]["properties"]["destination"]["properties"]["endpointUrl"].endswith("code=blob-key-2")


def test_a_subscription_with_other_settings_is_replaced(arm: FakeArm) -> None:
    # the published example (a StorageQueue destination, other filters) under our subscription's name
    arm.preload(STORAGE_TOPIC, "chat-data-blob-created", fixture("system_topic_event_subscription_get.json"))
    outcome = run()
    assert f"{STORAGE_TOPIC}/chat-data-blob-created" in outcome.updated
    stored = arm.subscriptions[(STORAGE_TOPIC, "chat-data-blob-created")]["properties"]
    assert stored["destination"]["endpointType"] == "WebHook"
    assert stored["filter"]["subjectBeginsWith"] == "/blobServices/default/containers/chat-data/blobs/"


def test_a_changed_filter_is_put_back(arm: FakeArm) -> None:
    run()
    # someone "simplified" the failure subscription to one for both event types
    stored = arm.subscriptions[(WORKSPACE_TOPIC, "job-run-failed")]
    stored["properties"]["filter"]["includedEventTypes"].append("Microsoft.MachineLearningServices.RunCompleted")
    outcome = run()
    assert outcome.updated == [f"{WORKSPACE_TOPIC}/job-run-failed"]
    assert arm.subscriptions[(WORKSPACE_TOPIC, "job-run-failed")]["properties"]["filter"]["includedEventTypes"] == [
        "Microsoft.MachineLearningServices.RunStatusChanged"
    ]


def test_a_key_that_never_appears_ends_with_a_clear_error_within_its_bound(arm: FakeArm) -> None:
    arm.key_after = 10**6
    sleeps: list[float] = []
    with pytest.raises(postdeploy.PostDeployError) as err:
        run(sleeps=sleeps, attempts=4, delay_s=7.0)
    message = str(err.value)
    assert "after 4 attempts (21 s)" in message
    assert "blobs_extension" in message and "eventgrid_extension" in message
    assert "azd hooks run postdeploy" in message
    assert sleeps == [7.0, 7.0, 7.0], "one wait between attempts, none after the last"
    assert arm.key_calls == 4
    assert arm.puts() == []


def test_functions_never_indexed_are_named(arm: FakeArm) -> None:
    arm.functions_after = 10**6
    with pytest.raises(postdeploy.PostDeployError, match=r"function\(s\) on_job_event, prepare_chat_data not indexed"):
        run(attempts=2)
    assert arm.key_calls == 0 and arm.puts() == []


def test_missing_environment_is_named() -> None:
    env = dict(ENV)
    del env["STORAGE_SYSTEM_TOPIC_NAME"], env["CHAT_DATA_CONTAINER"]
    with pytest.raises(postdeploy.PostDeployError, match="STORAGE_SYSTEM_TOPIC_NAME, CHAT_DATA_CONTAINER"):
        postdeploy.DeployTarget.from_env(env)


def test_main_reports_the_error_and_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert postdeploy.main([], environ={}) == 1
    assert "missing environment variable(s) AZURE_SUBSCRIPTION_ID" in capsys.readouterr().err


def test_errors_while_the_host_starts_count_as_not_ready(arm: FakeArm) -> None:
    arm.fail("POST", r"/host/default/listkeys$", 400, "BadRequest", times=2)
    sleeps: list[float] = []
    outcome = run(sleeps=sleeps)
    assert len(sleeps) == 2 and len(outcome.created) == 3


def test_an_error_that_lasts_is_in_the_final_message(arm: FakeArm) -> None:
    arm.fail("GET", r"/functions$", 400, "BadRequest", times=100)
    with pytest.raises(postdeploy.PostDeployError, match=r"last error: BadRequest: BadRequest for GET functions"):
        run(attempts=3)


def test_no_login_fails_at_once_with_what_to_do(arm: FakeArm) -> None:
    arm.fail("GET", rf"/sites/{APP}$", 401, "AuthenticationFailed")
    with pytest.raises(postdeploy.PostDeployError, match=r"not authorized .* run `azd auth login`"):
        run()
    assert arm.function_calls == 0


def test_a_rejected_subscription_names_itself_and_how_to_retry(arm: FakeArm) -> None:
    arm.fail("PUT", r"/eventSubscriptions/job-run-completed$", 400, "InvalidRequest")
    with pytest.raises(postdeploy.PostDeployError) as err:
        run()
    assert f"{WORKSPACE_TOPIC}/job-run-completed -> on_job_event failed: InvalidRequest" in str(err.value)
    assert "azd hooks run postdeploy" in str(err.value)
    # what was created before the failure stays; a rerun finishes the rest without rewriting it
    outcome = run()
    assert outcome.created == [f"{WORKSPACE_TOPIC}/job-run-completed", f"{WORKSPACE_TOPIC}/job-run-failed"]
    assert outcome.unchanged == [f"{STORAGE_TOPIC}/chat-data-blob-created"]


def test_the_azd_login_is_tried_first() -> None:
    # DefaultAzureCredential alone tries the az CLI before azd: the hook could act as another account.
    from azure.identity import AzureDeveloperCliCredential, DefaultAzureCredential

    chain = postdeploy.azd_credential().credentials
    assert isinstance(chain[0], AzureDeveloperCliCredential)
    assert isinstance(chain[1], DefaultAzureCredential)
    assert not any(isinstance(c, AzureDeveloperCliCredential) for c in chain[1].credentials), "azd twice in the chain"
