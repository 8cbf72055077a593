"""Every request the app and the post-deploy step send is allowed by a role their identity holds (issue 25.2).

``tests/azure_permissions.py`` derives each recorded request's RBAC operation and scope and matches
it with the published built-in role definitions (tests/fixtures/azure/role-permissions.json) of the
roles ``infra/modules/role-assignments.bicep`` assigns. ``.venv/bin/python -m tests.azure_permissions``
prints the table.
"""

from __future__ import annotations

import pytest

from tests import azure_permissions as perm

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning:marshmallow")


@pytest.fixture(scope="module")
def app_requests():
    return perm.app_requests()


def _denied(rows):
    return [f"{op.request} needs {op.action} at {op.scope}" for op, role in rows if role is None]


def test_every_request_of_the_app_is_allowed_by_a_role_the_template_assigns(app_requests):
    records, scopes = app_requests
    ops = perm.operations_of(records)
    rows = perm.check(ops, perm.template_assignments("appPrincipalId", scopes))
    assert len(rows) >= 15, [op.request for op, _ in rows]  # the whole cycle was recorded
    assert _denied(rows) == []
    assert not any("/vmSizes" in op.request for op in ops), "compute.list_sizes() is back"


def test_the_vm_size_list_the_notebook_uses_is_denied_to_the_app(app_requests):
    # GET .../providers/Microsoft.MachineLearningServices/locations/{loc}/vmSizes: subscription scope.
    _, scopes = app_requests
    action, scope = perm.arm_operation("GET", "/subscriptions/sub1/providers/Microsoft.MachineLearningServices/locations/eastus/vmSizes")
    assert (action, scope) == ("Microsoft.MachineLearningServices/locations/vmSizes/read",
                               "/subscriptions/sub1/providers/Microsoft.MachineLearningServices/locations/eastus")
    op = perm.Operation("GET vmSizes", action, False, scope)
    assert perm.check([op], perm.template_assignments("appPrincipalId", scopes)) == [(op, None)]


@pytest.mark.parametrize("removed", ["AzureML Data Scientist", "Monitoring Reader"])
def test_a_removed_role_is_caught(app_requests, removed):
    records, scopes = app_requests
    assignments = [a for a in perm.template_assignments("appPrincipalId", scopes) if a.role != removed]
    denied = _denied(perm.check(perm.operations_of(records), assignments))
    assert denied, f"removing {removed} denied nothing"
    if removed == "Monitoring Reader":
        assert all("metrics:getBatch" in d for d in denied), denied


def test_the_post_deploy_step_needs_nothing_beyond_contributor_on_the_group():
    rows = perm.postdeploy_check("Contributor")
    assert {op.action for op, _ in rows} >= {
        "Microsoft.Web/sites/host/listkeys/action", "Microsoft.EventGrid/systemTopics/eventSubscriptions/write",
        "Microsoft.EventGrid/systemTopics/eventSubscriptions/getFullUrl/action"}
    assert _denied(rows) == []


def test_a_reader_could_not_run_the_post_deploy_step():
    denied = _denied(perm.postdeploy_check("Monitoring Reader"))  # */read only
    assert any("listkeys/action" in d for d in denied) and any("eventSubscriptions/write" in d for d in denied)


def test_wildcards_match_as_azure_reads_the_published_roles():
    roles = perm.roles()
    scientist = roles["AzureML Data Scientist"]
    # The published notActions list workspaces/write: so workspaces/*/write must cover it.
    assert perm.matches(scientist["actions"], "Microsoft.MachineLearningServices/workspaces/write")
    assert not perm.role_allows(scientist, "Microsoft.MachineLearningServices/workspaces/write", False)
    assert not perm.role_allows(scientist, "Microsoft.MachineLearningServices/workspaces/computes/cluster/write", False)
    assert perm.role_allows(scientist, "microsoft.machinelearningservices/workspaces/onlineendpoints/listkeys/action", False)
    assert not perm.role_allows(scientist, "Microsoft.MachineLearningServices/locations/vmSizes/read", False)
    assert perm.role_allows(roles["Monitoring Reader"], "Microsoft.Insights/metrics/read", False)
    assert not perm.role_allows(roles["Storage Blob Data Reader"], "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write", True)
    assert perm.role_allows(roles["Storage Blob Data Owner"], "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write", True)
    assert not perm.role_allows(roles["Contributor"], "Microsoft.Authorization/roleAssignments/write", False)


def test_the_fixture_ids_are_the_template_s():
    from tests import infra_template as tpl

    ids = tpl.role_table()
    for name, role in perm.roles().items():
        if name in ids:
            assert ids[name] == role["id"], name
    used = {name for name in ids if any(ra.role_id == ids[name] for ra in tpl.role_assignments())}
    # No storage request is recorded by the fakes (docs/deploying.md says so): these two are not read.
    missing = used - set(perm.roles()) - {"Storage Table Data Contributor", "Storage Blob Data Contributor"}
    assert missing == set(), f"assigned roles without their published permissions: {missing}"
