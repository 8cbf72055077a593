"""azure.yaml validates against the azd JSON schema (vendored) and wires the pieces together."""

from __future__ import annotations

import json
import re

import jsonschema
import yaml

from tests.bicep_checks import ROOT
from tests.support import FIXTURES

SCHEMA = FIXTURES / "azd" / "azure.yaml.json"


def load() -> dict:
    return yaml.safe_load((ROOT / "azure.yaml").read_text(encoding="utf-8"))


def test_azure_yaml_validates_against_the_azd_schema() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    validator = jsonschema.Draft201909Validator(schema)
    errors = sorted(validator.iter_errors(load()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in errors)


def test_schema_catches_a_wrong_azure_yaml() -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    doc = load()
    doc["hooks"]["postdeploy"]["posix"]["shel"] = "sh"
    assert list(jsonschema.Draft201909Validator(schema).iter_errors(doc)), "the vendored schema accepted an unknown hook key"


def test_service_is_the_function_app_and_infra_is_main_bicep() -> None:
    doc = load()
    assert doc["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert (ROOT / "infra" / "main.bicep").is_file()
    (name, service), = doc["services"].items()
    assert service["host"] == "function" and service["language"] == "python" and service["project"] == "."
    # the Function App resource carries azd-service-name = this service's name
    text = (ROOT / "infra" / "modules" / "function-app.bicep").read_text(encoding="utf-8")
    assert f"'azd-service-name': '{name}'" in text


def test_postdeploy_hook_runs_the_step_with_pinned_requirements() -> None:
    hook = load()["hooks"]["postdeploy"]
    for platform in ("posix", "windows"):
        assert "-m scripts.azure_postdeploy" in hook[platform]["run"], platform
        assert "scripts/requirements-postdeploy.txt" in hook[platform]["run"], platform
    lock = dict(line.split("==", 1) for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line and not line.startswith("#"))
    lock = {k.lower(): v for k, v in lock.items()}
    for line in (ROOT / "scripts" / "requirements-postdeploy.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, version = re.split(r"==", line.strip())
        assert lock.get(name.lower()) == version, f"{name}=={version} in requirements-postdeploy.txt differs from requirements.lock ({lock.get(name.lower())})"


def test_deployment_package_leaves_out_infra_and_azd_state() -> None:
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".funcignore").read_text().splitlines()}
    for path in ("infra", "azure.yaml", ".azure", "scripts", "tests"):
        assert path in ignored, f".funcignore must leave {path} out of the deployment package"
