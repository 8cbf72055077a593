"""docs/deploying.md: two commands, and reference tables that match infra/."""

from __future__ import annotations

from scripts import azure_postdeploy as postdeploy
from tests import infra_template as tpl
from tests.bicep_checks import ROOT


def section() -> str:
    return (ROOT / "docs" / "deploying.md").read_text(encoding="utf-8")


def tables(text: str) -> list[list[str]]:
    found, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append(line)
        elif current:
            found.append(current)
            current = []
    if current:
        found.append(current)
    return found


def test_deploy_is_two_commands_and_a_teardown() -> None:
    text = section()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]
    assert commands == ["azd auth login", "azd up"]
    assert "azd down --purge" in text
    assert f"{postdeploy.DEFAULT_ATTEMPTS} checks, {postdeploy.DEFAULT_DELAY_S:.0f} s apart" in text, "docs/deploying.md's wait bound != the step's"


def test_reference_tables_are_generated_from_the_template() -> None:
    found = tables(section())
    expected = [tpl.settings_table(), tpl.roles_table(), tpl.subscriptions_table()]
    assert found == expected, "docs/deploying.md's reference tables are out of date: regenerate with `.venv/bin/python -m tests.infra_template`"
