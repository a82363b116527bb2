"""``GET /metrics``: the twin in the Prometheus text exposition format, through the official client library.

Nothing here counts anything itself: :class:`TwinCollector`, a custom collector, reads at scrape time what the
components already publish (the typed status views of :class:`~opendt.twin.status.TwinState`, the window
loop's latency histogram, the result store's last durable window, the consumer's Kafka positions) and
renders it as metric families; the process collector of ``prometheus-client`` adds the process's memory and
CPU. Names follow the Prometheus conventions (``opendt_`` prefix, base units in the name, ``_total`` for
counters); every family is listed in the README (§ Prometheus).

A scrape costs what the newest window costs (the store's tail by the journal's row counts), never the run's
length: nothing is kept between scrapes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import polars as pl
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from opendt.api.readmodel import TwinView
from opendt.api.routes import STATE, VIEW
from opendt.twin.results import ResultStore
from opendt.twin.status import PartitionOffsets, TwinState

Metric = GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily | InfoMetricFamily
TWIN_STATUSES = ("starting", "running", "stopping", "stopped", "failed")


def _counter(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield CounterMetricFamily(name, doc, value=float(value))


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    if value is not None:
        yield GaugeMetricFamily(name, doc, value=float(value))


def last_window(store: ResultStore) -> dict[str, Any]:
    """The newest durable window, read from the store's tail by the journal's row counts (empty: no window
    yet): its start (ms) and end (s); its predicted power (at its last instant), energy and carbon summed over
    the clusters and the carbon intensity (absent for a failed window); per meter (``dc.power``'s source) its
    measured power at its last instant and its energy (``measured``: source → (watts, joules))."""
    if store.windows.is_empty():
        return {}
    last = store.windows.row(-1, named=True)
    start = last["window_start"]
    out: dict[str, Any] = {
        "window_start_ms": int(start.timestamp() * 1000),
        "window_end_seconds": last["window_end"].timestamp(),
    }
    rows = int(last["rows"])
    if rows and store.agg.height >= rows:
        agg = store.agg.tail(rows)
        if bool((agg["window_start"] == start).all()):
            out["predicted_power_watts"] = float(agg["power_draw"][-1])
            out["predicted_energy_joules"] = float(agg["energy_usage"].sum())
            carbon = agg["carbon_emission"]
            if not carbon.has_nulls():  # unknown (no carbon intensity received for it): absent, never 0
                out["predicted_carbon_grams"] = float(carbon.sum())
            ci = agg["carbon_intensity"][-1]
            if ci is not None:
                out["carbon_intensity"] = float(ci)
    samples = int(last["power_samples"])
    if samples and store.measured.height >= samples:
        meas = store.measured.tail(samples)
        if bool((meas["window_start"] == start).all()):
            per_source = (
                meas.sort("timestamp")
                .group_by("source", maintain_order=True)
                .agg(pl.col("power_draw").last(), pl.col("energy_usage").sum())
                .sort("source")
            )
            out["measured"] = {
                str(r["source"]): (float(r["power_draw"]), float(r["energy_usage"]))
                for r in per_source.iter_rows(named=True)
            }
    return out


def _labelled(name: str, doc: str, label: str, values: list[tuple[str, float]]) -> Iterator[Metric]:
    """One gauge family with a series per ``label`` value; an empty value is a series without the label."""
    if not values:
        return
    with_label = [(k, v) for k, v in values if k]
    family = GaugeMetricFamily(name, doc, labels=[label] if with_label else None)
    for key, value in values:
        if key:
            family.add_metric([key], value)
        else:
            family.add_metric([], value)
    yield family


class TwinCollector(Collector):
    """The twin's metric families, read from ``state`` and ``view`` when collected; ``offsets`` are the input
    consumer's Kafka positions, fetched (async) by the handler just before."""

    def __init__(
        self,
        state: TwinState,
        view: TwinView,
        offsets: list[PartitionOffsets],
        now: Callable[[], float] = time.time,
    ) -> None:
        self.state = state
        self.view = view
        self.offsets = offsets
        self.now = now

    def collect(self) -> Iterable[Metric]:
        yield from self._twin()
        yield from self._stream()
        yield from self._windows()
        yield from self._results()
        yield from self._calibration()
        yield from self._whatif()
        yield from self._optimizer()

    def _twin(self) -> Iterator[Metric]:
        s = self.state
        info = InfoMetricFamily("opendt_twin", "The twin's run", labels=["run_id", "engine"])
        engine = "none" if s.loop is None else s.loop.status().engine
        info.add_metric([s.run_id, engine], {})
        yield info
        status = GaugeMetricFamily(
            "opendt_twin_status", "1 for the daemon's current status, 0 for the others", labels=["status"]
        )
        for name in sorted({*TWIN_STATUSES, s.status}):
            status.add_metric([name], 1.0 if name == s.status else 0.0)
        yield status
        yield GaugeMetricFamily(
            "opendt_twin_start_time_seconds", "When the daemon started (Unix time)", value=s.started_at
        )

    def _stream(self) -> Iterator[Metric]:
        wm = self.state.watermark_ms
        if wm is not None:
            yield GaugeMetricFamily(
                "opendt_watermark_timestamp_seconds",
                "The consumer's watermark: trace time up to which every input partition has spoken",
                value=wm / 1000,
            )
            yield GaugeMetricFamily(
                "opendt_watermark_lag_seconds",
                "Wall clock minus the watermark (a replayed past trace lags by its age)",
                value=self.now() - wm / 1000,
            )
        lag = GaugeMetricFamily(
            "opendt_kafka_consumer_lag_records",
            "Records in the partition the twin's consumer has not read (high watermark of its last fetch "
            "minus its position)",
            labels=["topic", "partition"],
        )
        read: dict[str, float | None] = {}
        for p in self.offsets:
            if p.highwater is not None:
                lag.add_metric([p.topic, str(p.partition)], max(0, p.highwater - p.position))
            before = read.get(p.topic, 0.0)
            read[p.topic] = (
                None if p.log_start is None or before is None else before + p.position - p.log_start
            )
        yield lag
        ingested = CounterMetricFamily(
            "opendt_records_ingested",
            "Records of the topic the twin's consumer has read (its positions minus the log start offsets, "
            "summed over the partitions; a resumed run counts those an earlier process read)",
            labels=["topic"],
        )
        for topic, n in sorted(read.items()):
            if n is not None:
                ingested.add_metric([topic], max(0.0, n))
        yield ingested
        if self.state.windows is None:
            return
        w = self.state.windows.status()
        malformed = w.malformed + self.state.counters.malformed_messages
        yield from _counter(
            "opendt_events", "Input events windowed (tasks, fragments, power, carbon)", w.events
        )
        yield from _counter("opendt_messages_malformed", "Messages that failed to decode", malformed)
        yield from _counter(
            "opendt_messages_quarantined",
            "Messages refused as outliers in time (windowing.max_skew_s)",
            w.quarantined,
        )
        yield from _counter(
            "opendt_messages_dead_lettered", "Messages forwarded to the dead-letter topic", w.dead_lettered
        )
        yield from _counter("opendt_messages_duplicate", "Events received again (dropped)", w.duplicates)
        yield from _counter("opendt_messages_late", "Events for a window already closed", w.late)
        yield from _counter(
            "opendt_messages_orphaned", "Fragments of tasks never received (dead-lettered)", w.orphans
        )
        yield from _gauge("opendt_windows_queued", "Closed windows waiting for the window loop", w.queued)

    def _windows(self) -> Iterator[Metric]:
        loop = self.state.loop
        if loop is None:
            return
        sim = loop.status()
        yield from _counter(
            "opendt_windows_simulated", "Windows simulated by this process", sim.windows_simulated
        )
        yield from _counter(
            "opendt_windows_failed", "Windows that could not be simulated", sim.windows_failed
        )
        yield from _counter(
            "opendt_windows_replayed",
            "Durable windows replayed into the engine at a resume",
            sim.windows_replayed,
        )
        yield from _gauge("opendt_windows_durable", "Windows in the run's journal", sim.windows_durable)
        yield from _counter("opendt_worker_restarts", "Engine worker restarts", sim.worker_restarts)
        yield from _counter(
            "opendt_topologies_refused",
            "Simulated topology versions the engine refused",
            sim.topologies_refused,
        )
        h = loop.latency
        cumulative = h.cumulative()
        yield HistogramMetricFamily(
            "opendt_window_latency_seconds",
            "Wall time from taking a window to its results being durable",
            buckets=[("+Inf" if b == float("inf") else repr(b), n) for b, n in cumulative],
            sum_value=h.total_s,
        )
        check = sim.crosscheck
        if check is not None:
            yield from _counter(
                "opendt_crosschecks", "Cross-checks of the engine against OpenDC", check["done"]
            )
        compared = [] if self.view.divergence is None else self.view.divergence()
        if compared:
            yield GaugeMetricFamily(
                "opendt_crosscheck_divergence_ratio",
                "The newest cross-check that compared something: its largest relative energy error per "
                "interval (builtin vs OpenDC)",
                value=compared[-1][1],
            )

    def _results(self) -> Iterator[Metric]:
        """The newest durable window's figures: predicted per cluster (from the window loop, which simulated
        it; right after a restart, until the next window, one series without the label holds the clusters'
        sum from the store), measured per meter. ``sum(...)`` is the datacenter's figure either way."""
        if self.view.store is None:
            return
        last = last_window(self.view.store)
        if not last:
            return
        yield from _gauge(
            "opendt_last_window_end_timestamp_seconds",
            "End of the newest durable window",
            last["window_end_seconds"],
        )
        loop = self.state.loop
        clusters = () if loop is None else loop.stats.clusters
        if clusters and clusters[0].window_start_ms != last["window_start_ms"]:
            clusters = ()  # a newer window is being made durable: the store's figures, not a mix
        predicted = (
            ("opendt_predicted_power_watts", "Simulated power at the newest durable window's last instant",
             "predicted_power_watts", [(c.cluster, c.power_watts) for c in clusters]),
            ("opendt_predicted_energy_joules", "Simulated energy of the newest durable window",
             "predicted_energy_joules", [(c.cluster, c.energy_joules) for c in clusters]),
            ("opendt_predicted_carbon_grams",
             "Simulated carbon emission of the newest durable window (gCO2; absent without carbon intensity)",
             "predicted_carbon_grams",
             [(c.cluster, c.carbon_grams) for c in clusters if c.carbon_grams is not None]),
        )  # fmt: skip
        for name, doc, key, per_cluster in predicted:
            if key not in last:
                continue
            yield from _labelled(name, doc, "cluster", per_cluster if clusters else [("", last[key])])
        measured: dict[str, tuple[float, float]] = last.get("measured", {})
        yield from _labelled(
            "opendt_measured_power_watts",
            "Measured power at the newest durable window's last instant, per meter (dc.power's source)",
            "source",
            [(src, w) for src, (w, _) in measured.items()],
        )
        yield from _labelled(
            "opendt_measured_energy_joules",
            "Measured energy of the newest durable window, per meter",
            "source",
            [(src, j) for src, (_, j) in measured.items()],
        )
        yield from _gauge(
            "opendt_carbon_intensity_grams_per_kilowatt_hour",
            "Grid carbon intensity at the newest durable window's last instant",
            last.get("carbon_intensity"),
        )

    def _calibration(self) -> Iterator[Metric]:
        if self.state.calibration is None:
            return
        v: dict[str, Any] = self.state.calibration.view()
        rounds = CounterMetricFamily(
            "opendt_calibration_rounds", "Calibration rounds by outcome", labels=["status"]
        )
        for status in ("applied", "skipped", "failed"):
            rounds.add_metric([status], float(v.get(status, 0)))
        yield rounds
        mape = GaugeMetricFamily(
            "opendt_calibration_mape_ratio",
            "Power MAPE over the calibration rounds of the last day (sample-weighted, 0.05 = 5 %)",
            labels=["model"],
        )
        last_day = v.get("mape", {}).get("last_day", {})
        for model in ("calibrated", "uncalibrated"):
            value = last_day.get(model)
            if value is not None:
                mape.add_metric([model], float(value) / 100)
        yield mape

    def _whatif(self) -> Iterator[Metric]:
        if self.state.scenarios is None:
            return
        v = self.state.scenarios.view()
        yield from _gauge("opendt_whatif_queued", "What-if runs queued or running", v.get("queued"))
        yield from _gauge("opendt_whatif_running", "What-if runs running", v.get("running"))
        yield from _counter("opendt_whatif_runs", "What-if runs completed", v.get("runs"))
        yield from _counter(
            "opendt_whatif_rejected", "What-if runs refused (queue full)", v.get("rejected_busy")
        )

    def _optimizer(self) -> Iterator[Metric]:
        if self.state.optimizer is None:
            return
        counts = self.state.optimizer.summary().get("counts", {})
        rounds = CounterMetricFamily(
            "opendt_optimizer_rounds", "Optimizer rounds by outcome", labels=["status"]
        )
        for status, n in sorted(counts.items()):
            rounds.add_metric([status], float(n))
        yield rounds


async def metrics(request: web.Request) -> web.Response:
    state, view = request.app[STATE], request.app[VIEW]
    offsets = [] if state.offsets is None else await state.offsets.offsets()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TwinCollector(state, view, offsets))
    registry.register(ProcessCollector(registry=None))
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
