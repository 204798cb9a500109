"""``GET /metrics``: the process's metrics in Prometheus text (FLEET-SPEC §7), on every API listener.

The ``fleetpy_units`` gauge is computed at scrape time from the registry (units by desired and current state), so
that any API process, including one that runs no engine, reports the cluster as it is.
"""

from __future__ import annotations

from collections import Counter

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fleetpy.metrics import Metrics
from fleetpy.registry.base import ApiRegistry

METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
UNITS_REGISTRY: web.AppKey[ApiRegistry] = web.AppKey("metrics-registry")


async def metrics(request: web.Request) -> web.StreamResponse:
    process_metrics = request.app[METRICS]
    views = await request.app[UNITS_REGISTRY].list_units()
    counts = Counter(
        (v.record.desired.value, "global" if v.record.is_global else (v.current.value if v.current else "inactive"))
        for v in views
    )
    process_metrics.units.clear()
    for (desired, current), count in counts.items():
        process_metrics.units.labels(desired, current).set(count)
    body = generate_latest(process_metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application, registry: ApiRegistry, process_metrics: Metrics) -> None:
    """Register ``/metrics``; call before any catch-all route."""
    app[METRICS] = process_metrics
    app[UNITS_REGISTRY] = registry
    app.router.add_route("GET", "/metrics", metrics)
