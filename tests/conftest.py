"""Shared fixtures: Azurite for the storage tier, and per-test settings swapped in, not os.environ."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from devhost.azurite import Azurite, start, stop_process
from shared.settings import Settings
from tests.support import FIXTURES, free_port, make_settings, settings_in_use

if TYPE_CHECKING:
    from shared.backends.local import LocalBackend
    from tests.fakes.local import EventSink


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    assert FIXTURES.is_dir(), f"fixtures not found at {FIXTURES}"
    return FIXTURES


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """A private Azurite on free ports for the whole test session."""
    az = Azurite(blob_port=free_port(), queue_port=free_port(), table_port=free_port())
    location = tmp_path_factory.mktemp("azurite")
    proc = start(az, location)
    try:
        yield az
    finally:
        stop_process(proc.pid)
        proc.wait(timeout=5)  # already reaped by stop_process; tells Popen, so no ResourceWarning


@pytest.fixture
def unit_settings(tmp_path: Path) -> Iterator[Settings]:
    """Settings for unit tests that need no storage."""
    s = make_settings(LOCAL_WORKSPACE_DIR=str(tmp_path / "workspace"), LOCAL_BASE_MODEL="tiny-random")
    with settings_in_use(s):
        yield s


@pytest.fixture
def storage_settings(azurite: Azurite, tmp_path: Path) -> Iterator[Settings]:
    """Settings pointing at the session's Azurite, with containers and a table of this test's own."""
    from shared.storage import ensure_storage

    suffix = uuid.uuid4().hex[:10]
    s = make_settings(
        AzureWebJobsStorage=azurite.connection_string,
        CHAT_DATA_CONTAINER=f"chat-data-{suffix}",
        PREPARED_CONTAINER=f"prepared-{suffix}",
        LEDGER_TABLE=f"ledger{suffix}",
        LOCAL_WORKSPACE_DIR=str(tmp_path / "workspace"),
        LOCAL_BASE_MODEL="tiny-random",
        # The tiny random model answers noise: it meets no evaluation floor, and a collection's first
        # version must (ROLLOUT_CANDIDATES). The floors are the rollout tests' business (tests/storage/
        # test_rollout.py, the SmolLM2 rollout tier); elsewhere a first version is judged on the rules only.
        EVAL_FLOORS="{}",
    )
    ensure_storage(s)
    with settings_in_use(s):
        yield s


@pytest.fixture(scope="session")
def mlflow_store_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its schema migrated once per session (a fresh store's migration
    costs each local workspace about 10 s of its first job)."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    code = "import mlflow, sys; c = mlflow.MlflowClient(sys.argv[1]); c.search_experiments(); c.search_registered_models()"
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{path}"], check=True, capture_output=True, timeout=300)
    return path


@pytest.fixture
def migrated_mlflow_store(mlflow_store_template: Path, tmp_path: Path) -> Path:
    """This test's local workspace (``tmp_path/workspace``, as the settings fixtures name it) starts
    with an already migrated MLflow store: what a workspace looks like after its first job."""
    workspace = tmp_path / "workspace"
    workspace.mkdir(exist_ok=True)
    shutil.copyfile(mlflow_store_template, workspace / "mlflow.db")
    return workspace / "mlflow.db"


# Tiers whose every test trains in a local workspace: they start from the migrated store.
TRAINING_TIERS = {"e2e", "integration", "slow"}


@pytest.fixture(autouse=True)
def _migrated_store_in_training_tiers(request: pytest.FixtureRequest) -> None:
    if request.node.path.parent.name in TRAINING_TIERS and request.node.path.parent.parent == FIXTURES.parent:
        request.getfixturevalue("migrated_mlflow_store")


# The local workspace with its job events collected (tests/storage/test_local_workspace.py, tests/integration).
@pytest.fixture
def event_sink() -> Iterator[EventSink]:
    """A webhook that collects the local workspace's job events (tests/fakes/local.py)."""
    from tests.fakes.local import EventSink

    sink = EventSink().start()
    try:
        yield sink
    finally:
        sink.stop()


@pytest.fixture
def backend_with_sink(storage_settings: Settings, event_sink: EventSink) -> Iterator[tuple[LocalBackend, Settings]]:
    """A real local workspace on this test's storage, posting its job events to ``event_sink``."""
    from shared.backends.local import LocalBackend

    s = storage_settings.replace(eventgrid_webhook_url=event_sink.url)
    backend = LocalBackend(s, event_retry_total_s=10)
    try:
        yield backend, s
    finally:
        backend.shutdown()
