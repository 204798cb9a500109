"""The metrics of one fleetpyd process, served at ``/metrics`` in Prometheus text (FLEET-SPEC §7, §9.13).

One ``Metrics`` object per process, on a ``CollectorRegistry`` of its own, is created by the composition root and
passed down to what counts (no module globals: two daemons in one test process never share counters).

fleet's nine metrics keep their names and labels, all of them registered (fleet exported only five), with
fleet's bugs fixed: the leader start time is *set*, a reconcile is counted once, and ``schedule`` failures
count units that newly could not be placed rather than every kept unit on every pass. fleetpy adds its own
under ``fleetpy_``: reconcile duration and count per loop, etcd operations and failures, units by desired and
current state, and the time from a desired-state change to its achievement.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

# Convergence takes from milliseconds (a local start) to minutes (a unit waiting for its machine).
_CONVERGENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, float("inf"))


@dataclass(frozen=True)
class Metrics:
    registry: CollectorRegistry
    # fleet's (FLEET-SPEC §7)
    engine_leader_start_time: Gauge
    engine_task_count: Counter
    engine_task_failure_count: Counter
    engine_reconcile_count: Counter
    engine_reconcile_failure_count: Counter
    engine_reconcile_duration: Histogram
    registry_operation_count: Counter
    registry_operation_failed_count: Counter
    registry_operation_duration: Histogram
    # fleetpy's
    reconcile_duration: Histogram
    reconcile_count: Counter
    reconcile_failures: Counter
    etcd_operations: Counter
    etcd_failures: Counter
    units: Gauge
    convergence: Histogram

    def reconciled(self, loop: str, seconds: float, *, failed: bool) -> None:
        """One pass of ``loop`` (``engine`` or ``agent``) that took ``seconds``."""
        self.reconcile_count.labels(loop).inc()
        self.reconcile_duration.labels(loop).observe(seconds)
        if failed:
            self.reconcile_failures.labels(loop).inc()
        if loop == "engine":
            self.engine_reconcile_count.inc()
            self.engine_reconcile_duration.observe(seconds)
            if failed:
                self.engine_reconcile_failure_count.labels("run").inc()

    def etcd_operation(self, op: str, *, failed: bool) -> None:
        self.etcd_operations.labels(op).inc()
        if failed:
            self.etcd_failures.labels(op).inc()

    @contextmanager
    def registry_operation(self, kind: str) -> Iterator[None]:
        """fleet's registry metrics around one unit operation (``get``, ``set``, ``get_all``)."""
        self.registry_operation_count.labels(kind).inc()
        started = time.monotonic()
        try:
            yield
        except Exception:
            self.registry_operation_failed_count.labels(kind).inc()
            raise
        finally:
            self.registry_operation_duration.labels(kind).observe(time.monotonic() - started)


def new_metrics(*, process: bool = True) -> Metrics:
    """Every metric on a registry of its own (with the process, platform and GC collectors unless
    ``process`` is false)."""
    registry = CollectorRegistry(auto_describe=True)
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)

    def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=registry)

    metrics = Metrics(
        registry=registry,
        engine_leader_start_time=Gauge(
            "fleet_engine_leader_start_time",
            "Start time of becoming an engine leader since epoch in seconds",
            registry=registry,
        ),
        engine_task_count=counter("fleet_engine_task_count_total", "Counter of engine schedule tasks", ("type",)),
        engine_task_failure_count=counter(
            "fleet_engine_task_failure_count_total", "Counter of engine schedule task failures", ("type",)
        ),
        engine_reconcile_count=counter("fleet_engine_reconcile_count_total", "Counter of reconcile rounds"),
        engine_reconcile_failure_count=counter(
            "fleet_engine_reconcile_failure_count_total", "Counter of reconcile failures", ("type",)
        ),
        engine_reconcile_duration=Histogram(
            "fleet_engine_reconcile_duration_second",
            "Histogram of time (in seconds) each schedule round takes",
            registry=registry,
        ),
        registry_operation_count=counter(
            "fleet_registry_operation_count_total", "Counter of registry operations", ("type",)
        ),
        registry_operation_failed_count=counter(
            "fleet_registry_operation_failed_count_total", "Counter of failed registry operations", ("type",)
        ),
        registry_operation_duration=Histogram(
            "fleet_registry_operation_duration_second",
            "Histogram of time (in seconds) each registry operation takes",
            ("ops",),
            registry=registry,
        ),
        reconcile_duration=Histogram(
            "fleetpy_reconcile_duration_seconds",
            "Time each reconcile pass takes, per loop",
            ("loop",),
            registry=registry,
        ),
        reconcile_count=counter("fleetpy_reconcile_total", "Reconcile passes, per loop", ("loop",)),
        reconcile_failures=counter(
            "fleetpy_reconcile_failures_total", "Reconcile passes that failed (to be retried), per loop", ("loop",)
        ),
        etcd_operations=counter("fleetpy_etcd_operations_total", "etcd requests, per operation", ("op",)),
        etcd_failures=counter(
            "fleetpy_etcd_operation_failures_total", "etcd requests that failed, per operation", ("op",)
        ),
        units=Gauge(
            "fleetpy_units",
            "Units by desired and current state (current 'global' for global units), as of the last scrape",
            ("desired", "current"),
            registry=registry,
        ),
        convergence=Histogram(
            "fleetpy_convergence_seconds",
            "Time from a machine seeing a new desired state (or hash) of a unit to the agent achieving it",
            buckets=_CONVERGENCE_BUCKETS,
            registry=registry,
        ),
    )
    # Every series fleet knows starts at 0, so that rates and alerts work before the first event.
    for task in ("attemptscheduleunit", "unscheduleunit", "updateunit"):
        metrics.engine_task_count.labels(task)
        metrics.engine_task_failure_count.labels(task)
    for failure in ("machine_away", "run", "schedule"):
        metrics.engine_reconcile_failure_count.labels(failure)
    for operation in ("get", "set", "get_all"):
        metrics.registry_operation_count.labels(operation)
        metrics.registry_operation_failed_count.labels(operation)
    return metrics
