"""When each endpoint last served a request: Azure Monitor's ``RequestsPerMinute`` (the janitor's idle test)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from shared.backends.azureml.errors import error_reason

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
ACTIVITY_METRIC = "RequestsPerMinute"
_METRICS_BATCH = 50  # resource ids per metrics:getBatch call (service limit)


class EndpointActivity:
    """The activity part of :class:`~shared.backends.azureml.backend.AzureMLBackend` (its settings, credential, clients)."""

    def last_activity(self, endpoints: list[Any]) -> dict[str, datetime | None]:
        """Last minute with requests (Azure Monitor ``RequestsPerMinute``), by lower-case endpoint id.

        Looks back twice the idle threshold (at least an hour). Any failure to read the metrics
        gives no entry (unknown), never an error: the janitor then relies on the ledger.
        """
        window = timedelta(minutes=max(60.0, 2 * self.settings.idle_endpoint_minutes))
        granularity = timedelta(minutes=1) if window <= timedelta(days=1) else timedelta(hours=1)
        by_region: dict[str, list[str]] = {}
        for e in endpoints:
            if e.id and e.location:
                by_region.setdefault(str(e.location).lower().replace(" ", ""), []).append(str(e.id))
        found: dict[str, datetime | None] = {}
        for region, ids in by_region.items():
            for start in range(0, len(ids), _METRICS_BATCH):
                batch = ids[start:start + _METRICS_BATCH]
                try:
                    found.update(self._query_activity(region, batch, window, granularity))
                except Exception as exc:  # noqa: BLE001 - metrics are advisory: unknown, never a crash
                    log.warning("cannot read %s for %d endpoint(s) in %s: %s", ACTIVITY_METRIC, len(batch), region, error_reason(exc))
        return found

    def _query_activity(self, region: str, ids: list[str], window: timedelta, granularity: timedelta) -> dict[str, datetime | None]:
        from azure.monitor.querymetrics import MetricsClient

        client = self._metrics_clients.get(region)
        if client is None:
            client = MetricsClient(f"https://{region}.metrics.monitor.azure.com", self.credential)
            self._metrics_clients[region] = client
        results = client.query_resources(
            resource_ids=ids,
            metric_namespace=METRICS_NAMESPACE,
            metric_names=[ACTIVITY_METRIC],
            timespan=window,
            granularity=granularity,
            aggregations=["Average"],
        )
        wanted = [i.lower() for i in ids]
        found: dict[str, datetime | None] = {}
        for result in results:
            for metric in result.metrics:
                metric_id = str(metric.id or "").lower()
                owner = next((i for i in wanted if metric_id.startswith(i + "/")), None)
                if owner is None:
                    continue
                latest = found.get(owner)
                for series in metric.timeseries:
                    for point in series.data:
                        if (point.average or 0) > 0 and (latest is None or point.timestamp > latest):
                            latest = point.timestamp
                found[owner] = latest
        return found
