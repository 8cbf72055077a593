"""The endpoint half of the local backend: endpoints and their deployments as workspace processes.

An endpoint is a ``localworkspace.router`` process on its own port in front of one
``localworkspace.serve`` process per deployment; its state is ``record.json`` under the workspace's
``endpoints/<name>/``, checked against the real processes each time it is read (a process that died
is reported as failed, never as healthy).
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localworkspace.ports import free_port
from localworkspace.workspace import Workspace, now_iso, read_json, read_pid_file, stop_process_group, write_json
from shared.backends.base import (
    EP_DELETED,
    EP_DELETING,
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    HEALTH_HEALTHY,
    HEALTH_MISSING,
    HEALTH_STARTING,
    HEALTH_UNHEALTHY,
    LOCAL_INSTANCE_TYPE,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    BackendError,
    DeploymentInfo,
    DeploymentMetrics,
    EndpointHealth,
    EndpointInfo,
    ModelRef,
    NotFoundError,
    ScoringTarget,
    TransientBackendError,
    check_traffic,
)
from shared.backends.local_processes import is_running, spawn
from shared.clock import parse_iso

if TYPE_CHECKING:
    from shared.settings import Settings

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "default"
INSTANCE_TYPE = LOCAL_INSTANCE_TYPE
SCORING_TIMEOUT_S = 90.0
ENDPOINT_STARTUP_TIMEOUT_S = 600.0  # a cold SmolLM2 server on a busy 2-core CPU can be slow
HEALTH_TIMEOUT_S = 3.0  # GET /health of an endpoint server (a busy CPU server still answers it)
DRAIN_TIMEOUT_S = SCORING_TIMEOUT_S  # a deployment being deleted finishes its requests in flight first, this long at most


class LocalEndpoints:
    """``MLBackend``'s endpoint and deployment calls on the local workspace (a part of ``LocalBackend``)."""

    settings: Settings
    ws: Workspace
    endpoint_startup_timeout_s: float

    def _record_path(self, endpoint_name: str) -> Path:
        return self.ws.endpoint_dir(endpoint_name) / "record.json"

    # Layout of a local endpoint (``endpoints/<name>/``): ``server.pid``/``server.log`` are the
    # endpoint's router (localworkspace.router, on the endpoint's port), each deployment is a
    # ``localworkspace.serve`` process under ``deployments/<deployment>/`` on its own port.
    # ``record.json`` holds the endpoint (``deployment``: the one that serves when traffic is
    # routed to "its deployment", the champion) and ``deployments`` with their states and ports.

    def _deployment_dir(self, endpoint_name: str, deployment: str) -> Path:
        return self.ws.endpoint_dir(endpoint_name) / "deployments" / deployment

    def _stop_endpoint_processes(self, ep_dir: Path) -> None:
        for pid_file in [ep_dir / "server.pid", *sorted(ep_dir.glob("deployments/*/server.pid"))]:
            proc = read_pid_file(pid_file)
            if proc is not None:
                stop_process_group(proc)

    def _spawn_deployment(self, model: ModelRef, endpoint_name: str, deployment: str, key: str) -> dict[str, Any]:
        """Start one deployment's model server; its entry for the record's ``deployments``."""
        dep_dir = self._deployment_dir(endpoint_name, deployment)
        dep_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        spawn(
            ["-m", "localworkspace.serve", "--model-uri", f"models:/{model.name}/{model.version}",
             "--tracking-uri", self.ws.tracking_uri, "--port", str(port), "--activity-file", str(dep_dir / "activity"),
             "--max-new-tokens-cap", str(self.settings.scoring_max_new_tokens)],
            dep_dir / "server.log", dep_dir / "server.pid", extra_env={"LOCAL_ENDPOINT_KEY": key},
        )
        return {"name": deployment, "state": EP_PROVISIONING, "model": model.ref, "model_name": model.name,
                "model_version": model.version, "job_name": model.job_name, "base_model": model.base_model,
                "port": port, "deploy_started_at": now_iso(), "log_path": str(dep_dir / "server.log"), "error": None}

    def begin_deploy(self, model: ModelRef, endpoint_name: str, tags: dict[str, str]) -> None:
        ep_dir = self.ws.endpoint_dir(endpoint_name)
        with self.ws.lock("endpoint", ep_dir):
            record = read_json(self._record_path(endpoint_name))
            if (record and record.get("model") == model.ref and record.get("state") in {EP_PROVISIONING, EP_SUCCEEDED}
                    and is_running(ep_dir / "server.pid")
                    and is_running(self._deployment_dir(endpoint_name, record.get("deployment") or DEPLOYMENT_NAME)
                                    / "server.pid")):
                return  # already deploying or serving this model
            if record:  # a different model, or a dead process: replace the endpoint's processes
                self._stop_endpoint_processes(ep_dir)
            port = free_port()
            key = secrets.token_urlsafe(32)
            activity = ep_dir / "activity"
            activity.unlink(missing_ok=True)
            record = {
                "name": endpoint_name,
                "state": EP_PROVISIONING,
                "model": model.ref,
                "model_name": model.name,
                "model_version": model.version,
                "job_name": model.job_name,
                "base_model": model.base_model,
                "tags": {**tags, MANAGED_BY_TAG: MANAGED_BY_VALUE},
                "deployment": DEPLOYMENT_NAME,
                "traffic": {},
                "mirror_traffic": {},
                "deployments": {},
                "port": port,
                "key": key,
                "created_at": (record or {}).get("created_at") or now_iso(),
                "deploy_started_at": now_iso(),
                "log_path": str(ep_dir / "server.log"),
                "error": None,
            }
            record["deployments"][DEPLOYMENT_NAME] = self._spawn_deployment(model, endpoint_name, DEPLOYMENT_NAME, key)
            write_json(self._record_path(endpoint_name), record, mode=0o600)
            spawn(
                ["-m", "localworkspace.router", "--record", str(self._record_path(endpoint_name)), "--port", str(port),
                 "--activity-file", str(activity)],
                ep_dir / "server.log", ep_dir / "server.pid", extra_env={"LOCAL_ENDPOINT_KEY": key},
            )
        log.info("deploying %s to local endpoint %s on port %d", model.ref, endpoint_name, port)

    def begin_deploy_deployment(self, model: ModelRef, endpoint_name: str, deployment: str) -> None:
        """Start ``model`` as deployment ``deployment`` of a live endpoint, at 0% of its traffic
        (idempotent: a live deployment of the same model is left alone)."""
        ep_dir = self.ws.endpoint_dir(endpoint_name)
        with self.ws.lock("endpoint", ep_dir):
            record = read_json(self._record_path(endpoint_name))
            if record is None or record.get("state") in {EP_DELETED, EP_FAILED}:
                raise NotFoundError(f"local endpoint {endpoint_name} not found (or failed)")
            deployments = record.setdefault("deployments", {})
            current = deployments.get(deployment)
            dep_pid = self._deployment_dir(endpoint_name, deployment) / "server.pid"
            if (current and current.get("model") == model.ref and current.get("state") in {EP_PROVISIONING, EP_SUCCEEDED}
                    and is_running(dep_pid)):
                return
            if current and float((record.get("traffic") or {}).get(deployment, 0)) > 0:
                raise BackendError(f"deployment {deployment} of endpoint {endpoint_name} takes traffic: "
                                   "it cannot be replaced by another model")
            if current:
                stop_process_group(read_pid_file(dep_pid) or {})
            deployments[deployment] = self._spawn_deployment(model, endpoint_name, deployment, record["key"])
            write_json(self._record_path(endpoint_name), record, mode=0o600)
        log.info("deploying %s as deployment %s of local endpoint %s", model.ref, deployment, endpoint_name)

    def begin_delete_deployment(self, endpoint_name: str, deployment: str) -> None:
        """Stop and remove one deployment that takes no traffic (refused while it takes some).

        Drained first: marked ``deleting`` (the router
        sends it nothing more), then stopped once the router counts none of its requests in flight
        (``DRAIN_TIMEOUT_S`` at most): a request it took just before the traffic moved away (the
        old champion at a promotion) is answered, not cut off."""
        ep_dir = self.ws.endpoint_dir(endpoint_name)
        with self.ws.lock("endpoint", ep_dir):
            record = read_json(self._record_path(endpoint_name))
            if record is None or record.get("state") == EP_DELETED:
                raise NotFoundError(f"local endpoint {endpoint_name} not found")
            if deployment not in (record.get("deployments") or {}):
                raise NotFoundError(f"deployment {deployment} of local endpoint {endpoint_name} not found")
            if float((record.get("traffic") or {}).get(deployment, 0)) > 0:
                raise BackendError(f"deployment {deployment} of endpoint {endpoint_name} still takes traffic: "
                                   "route it elsewhere before deleting it")
            draining = record["deployments"][deployment].get("state") in {EP_PROVISIONING, EP_SUCCEEDED}
            record["deployments"][deployment]["state"] = EP_DELETING
            write_json(self._record_path(endpoint_name), record, mode=0o600)
        if draining:
            self._drain(record, deployment)
        with self.ws.lock("endpoint", ep_dir):
            record = read_json(self._record_path(endpoint_name)) or record
            if deployment not in (record.get("deployments") or {}):
                return  # deleted meanwhile
            proc = read_pid_file(self._deployment_dir(endpoint_name, deployment) / "server.pid")
            if proc is not None:  # (none: its server never started)
                stop_process_group(proc)
            del record["deployments"][deployment]
            record["mirror_traffic"] = {k: v for k, v in (record.get("mirror_traffic") or {}).items() if k != deployment}
            record["traffic"] = {k: v for k, v in (record.get("traffic") or {}).items() if k != deployment}
            write_json(self._record_path(endpoint_name), record, mode=0o600)
        log.info("deleted deployment %s of local endpoint %s", deployment, endpoint_name)

    def _drain(self, record: dict[str, Any], deployment: str) -> None:
        """Wait until the endpoint's router counts no request of ``deployment`` in flight."""
        import httpx

        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                reply = httpx.get(f"http://127.0.0.1:{record['port']}/metrics", params={"since": time.time()},
                                  headers={"Authorization": f"Bearer {record['key']}"}, timeout=HEALTH_TIMEOUT_S)
                in_flight = int(((reply.json().get("deployments") or {}).get(deployment) or {}).get("in_flight") or 0)
            except (httpx.HTTPError, ValueError):
                return  # no router to ask (it is gone, or stopping): nothing is forwarded to it either
            if in_flight == 0:
                return
            time.sleep(0.2)
        log.warning("deployment %s still had requests in flight after %.0f s; stopping it", deployment, DRAIN_TIMEOUT_S)

    def get_deployment(self, endpoint_name: str, deployment: str) -> DeploymentInfo | None:
        record = self._refresh_endpoint(endpoint_name)
        if record is None or record.get("state") == EP_DELETED:
            return None
        dep = (record.get("deployments") or {}).get(deployment)
        return _deployment_info(dep, record) if dep else None

    def deployment_metrics(self, endpoint_name: str, since: datetime) -> dict[str, DeploymentMetrics]:
        """Requests, errors and p95 latency per deployment since ``since``: the router's counters."""
        import httpx

        record = read_json(self._record_path(endpoint_name))
        if record is None or record.get("state") == EP_DELETED:
            raise NotFoundError(f"local endpoint {endpoint_name} not found")
        try:
            reply = httpx.get(f"http://127.0.0.1:{record['port']}/metrics", params={"since": since.timestamp()},
                              headers={"Authorization": f"Bearer {record['key']}"}, timeout=HEALTH_TIMEOUT_S)
            reply.raise_for_status()
        except httpx.HTTPError as exc:
            raise TransientBackendError(f"metrics of local endpoint {endpoint_name}: {type(exc).__name__}") from None
        return {name: DeploymentMetrics(requests=int(m["requests"]), errors=int(m["errors"]), p95_ms=m.get("p95_ms"))
                for name, m in (reply.json().get("deployments") or {}).items()}

    def _refresh_endpoint(self, endpoint_name: str) -> dict[str, Any] | None:
        """The record, with provisioning/succeeded checked against the real processes: the
        endpoint's router and its champion deployment for the endpoint's state, each
        deployment's own process for the deployment's."""
        ep_dir = self.ws.endpoint_dir(endpoint_name)
        record = read_json(self._record_path(endpoint_name))
        if record is None or record.get("state") not in {EP_PROVISIONING, EP_SUCCEEDED}:
            return record
        now = time.time()
        primary = record.get("deployment") or DEPLOYMENT_NAME
        dep_changes: dict[str, dict[str, Any]] = {}
        dep_alive: dict[str, bool] = {}
        for name, dep in (record.get("deployments") or {}).items():
            if dep.get("state") not in {EP_PROVISIONING, EP_SUCCEEDED}:
                continue
            pid_file = self._deployment_dir(endpoint_name, name) / "server.pid"
            alive = dep_alive[name] = is_running(pid_file)
            if not alive:
                dep_changes[name] = {"state": EP_FAILED,
                                     "error": f"deployment {name}: server process died; see {dep.get('log_path')}"}
            elif dep["state"] == EP_PROVISIONING:
                if self._healthy(dep["port"]):
                    dep_changes[name] = {"state": EP_SUCCEEDED, "ready_at": now_iso()}
                elif now - parse_iso(dep["deploy_started_at"]).timestamp() > self.endpoint_startup_timeout_s:
                    stop_process_group(read_pid_file(pid_file) or {})
                    dep_changes[name] = {"state": EP_FAILED, "error": f"deployment {name} not healthy after "
                                         f"{self.endpoint_startup_timeout_s:.0f} s; see {dep.get('log_path')}"}
        router_alive = is_running(ep_dir / "server.pid")
        primary_state = (dep_changes.get(primary) or {}).get("state") or (record.get("deployments") or {}).get(
            primary, {}).get("state")
        changes: dict[str, Any] = {}
        if not router_alive or primary_state == EP_FAILED or primary_state is None:
            which = "router" if not router_alive else f"deployment {primary}"
            changes = {"state": EP_FAILED, "error": (dep_changes.get(primary) or {}).get("error")
                       or f"{which} process died; see {ep_dir / 'server.log'}"}
        elif record["state"] == EP_PROVISIONING:
            if primary_state == EP_SUCCEEDED and self._healthy(record["port"]):
                changes = {"state": EP_SUCCEEDED, "ready_at": now_iso()}
            elif now - parse_iso(record["deploy_started_at"]).timestamp() > self.endpoint_startup_timeout_s:
                self._stop_endpoint_processes(ep_dir)
                changes = {"state": EP_FAILED, "error": f"server not healthy after {self.endpoint_startup_timeout_s:.0f} s; "
                                                         f"see {ep_dir / 'server.log'}"}
        if changes or dep_changes:
            with self.ws.lock("endpoint", ep_dir):
                current = read_json(self._record_path(endpoint_name)) or record
                # begin_deploy writes the record and the pid files under this lock: re-check here so
                # a deployment caught between the two is not taken for a dead one.
                same = current.get("state") == record["state"] and current.get("port") == record.get("port")
                if same and changes and (router_alive or not is_running(ep_dir / "server.pid")):
                    current.update(changes)
                for name, change in dep_changes.items():
                    dep = (current.get("deployments") or {}).get(name)
                    before = (record.get("deployments") or {}).get(name) or {}
                    if (dep and dep.get("state") == before.get("state") and dep.get("port") == before.get("port")
                            and (dep_alive.get(name)
                                 or not is_running(self._deployment_dir(endpoint_name, name) / "server.pid"))):
                        dep.update(change)
                write_json(self._record_path(endpoint_name), current, mode=0o600)
                record = current
        return record

    @staticmethod
    def _healthy(port: int) -> bool:
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _info(self, record: dict[str, Any]) -> EndpointInfo:
        ep_dir = self.ws.endpoint_dir(record["name"])
        activity = None
        try:
            activity = parse_iso((ep_dir / "activity").read_text(encoding="utf-8").strip())
        except (FileNotFoundError, ValueError):
            pass
        return EndpointInfo(
            name=record["name"],
            state=record["state"],
            tags=dict(record.get("tags") or {}),
            model=record.get("model"),
            deployment=record.get("deployment"),
            traffic={k: int(v) for k, v in (record.get("traffic") or {}).items()},
            instance_type=INSTANCE_TYPE,
            instance_count=1,
            created_at=parse_iso(record.get("created_at")),
            last_activity=activity,
            error=record.get("error"),
            deployments=tuple(_deployment_info(d, record) for _, d in sorted((record.get("deployments") or {}).items())),
            mirror_traffic={k: int(v) for k, v in (record.get("mirror_traffic") or {}).items()},
        )

    def get_endpoint(self, endpoint_name: str) -> EndpointInfo | None:
        record = self._refresh_endpoint(endpoint_name)
        if record is None or record.get("state") == EP_DELETED:
            return None
        return self._info(record)

    def set_traffic(self, endpoint_name: str, traffic: dict[str, int] | None = None,
                    mirror: dict[str, int] | None = None) -> None:
        """``traffic`` None: 100% to the endpoint's deployment. Otherwise the split (percentages of
        existing deployments summing to 100); the deployment given 100% becomes the endpoint's
        deployment (its model the endpoint's). ``mirror``: the mirrored share (None: unchanged)."""
        ep_dir = self.ws.endpoint_dir(endpoint_name)
        with self.ws.lock("endpoint", ep_dir):
            record = read_json(self._record_path(endpoint_name))
            if record is None or record.get("state") == EP_DELETED:
                raise NotFoundError(f"local endpoint {endpoint_name} not found")
            deployments = record.get("deployments") or {}
            if traffic is None:
                traffic = {record.get("deployment") or DEPLOYMENT_NAME: 100}
            check_traffic(endpoint_name, traffic, deployments, mirror)
            record["traffic"] = {k: int(v) for k, v in traffic.items() if int(v) > 0}
            if mirror is not None:
                record["mirror_traffic"] = {k: int(v) for k, v in mirror.items() if int(v) > 0}
            full = [k for k, v in record["traffic"].items() if v == 100]
            if full and full[0] in deployments:
                dep = deployments[full[0]]
                record.update(deployment=full[0], **{k: dep.get(k) for k in
                                                     ("model", "model_name", "model_version", "job_name", "base_model")})
            write_json(self._record_path(endpoint_name), record, mode=0o600)

    def list_endpoints(self) -> list[EndpointInfo]:
        found = []
        if not self.ws.endpoints_dir.is_dir():
            return found
        for record_path in sorted(self.ws.endpoints_dir.glob("*/record.json")):
            record = self._refresh_endpoint(record_path.parent.name)
            if record is None or record.get("state") == EP_DELETED:
                continue
            info = self._info(record)
            if info.managed:
                found.append(info)
        return found

    def begin_delete_endpoint(self, endpoint_name: str) -> None:
        ep_dir = self.ws.endpoint_dir(endpoint_name)
        with self.ws.lock("endpoint", ep_dir):
            record = read_json(self._record_path(endpoint_name))
            if record is None:
                raise NotFoundError(f"local endpoint {endpoint_name} not found")
            if record.get("state") == EP_DELETED:
                return
            self._stop_endpoint_processes(ep_dir)
            record.update(state=EP_DELETED, deleted_at=now_iso(), traffic={}, mirror_traffic={}, deployments={})
            write_json(self._record_path(endpoint_name), record, mode=0o600)
        log.info("deleted local endpoint %s", endpoint_name)

    def endpoint_health(self, endpoint_name: str) -> EndpointHealth:
        """Process alive and ``GET /health`` answering 200 within HEALTH_TIMEOUT_S."""
        import httpx

        record = self._refresh_endpoint(endpoint_name)  # a dead server process is recorded as failed here
        if record is None or record.get("state") == EP_DELETED:
            return EndpointHealth(HEALTH_MISSING, f"local endpoint {endpoint_name} does not exist")
        if record.get("state") == EP_PROVISIONING:
            return EndpointHealth(HEALTH_STARTING, "server process is starting")
        if record.get("state") != EP_SUCCEEDED:
            return EndpointHealth(HEALTH_UNHEALTHY, record.get("error") or f"endpoint is {record.get('state')}")
        url = f"http://127.0.0.1:{record['port']}/health"
        try:
            status = httpx.get(url, timeout=HEALTH_TIMEOUT_S).status_code
        except httpx.HTTPError as exc:
            alive = is_running(self.ws.endpoint_dir(endpoint_name) / "server.pid")
            # Refused with the process gone is conclusive; a timeout of a live process may be a busy CPU.
            return EndpointHealth(HEALTH_UNHEALTHY, f"GET {url} failed: {type(exc).__name__}",
                                  definite=not alive or isinstance(exc, httpx.ConnectError))
        if status != 200:
            return EndpointHealth(HEALTH_UNHEALTHY, f"GET {url} answered HTTP {status}", definite=False)
        return EndpointHealth(HEALTH_HEALTHY, "server process alive, /health answered 200")

    def get_scoring_target(self, endpoint_name: str, refresh: bool = False, deployment: str | None = None) -> ScoringTarget:
        """The endpoint's router; with ``deployment`` the target pins that deployment (the
        ``azureml-model-deployment`` header), without it the endpoint's traffic split applies."""
        record = read_json(self._record_path(endpoint_name))
        if record is None or record.get("state") == EP_DELETED:
            raise NotFoundError(f"local endpoint {endpoint_name} not found")
        if deployment is not None and deployment not in (record.get("deployments") or {}):
            raise NotFoundError(f"deployment {deployment} of local endpoint {endpoint_name} not found")
        return ScoringTarget(
            url=f"http://127.0.0.1:{record['port']}/score", key=record["key"], timeout_s=SCORING_TIMEOUT_S,
            deployment=deployment,
        )


def _deployment_info(dep: dict[str, Any], record: dict[str, Any]) -> DeploymentInfo:
    return DeploymentInfo(name=dep["name"], state=dep.get("state") or EP_FAILED, model=dep.get("model"),
                          traffic=int((record.get("traffic") or {}).get(dep["name"], 0)), error=dep.get("error"))
