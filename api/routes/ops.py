"""Operations: `/metrics` (Prometheus text format), `/healthz` (alive) and `/readyz` (caught up).

Metrics live in a registry of the app's own (never the process-global one): a collector
reads the pipeline, the rules and the live hub at scrape time, and a histogram of batch
durations is fed by a pipeline listener added while the app starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, get_args

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from api.deps import State
from api.encoding import json_response
from api.state import AppState
from etl.pipeline import Processed
from etl.status import Mode, SealerHealth

BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The app's registry: the batch-duration histogram and the state collector."""

    def __init__(self, state: AppState) -> None:
        self.registry = CollectorRegistry()
        self.batch_seconds = Histogram(
            "nodetap_batch_duration_seconds", "Time to read, parse and commit one batch, per stream.",
            ["stream"], buckets=BATCH_BUCKETS, registry=self.registry)
        self.registry.register(StateCollector(state))

    def observe(self, processed: Processed) -> None:
        """A pipeline listener (runs on the pipeline thread after each commit)."""
        self.batch_seconds.labels(processed.stream.name).observe(processed.seconds)


class StateCollector:
    """Reads pipeline, rules and hub counters when Prometheus scrapes."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    def describe(self) -> list[Metric]:
        return []  # names are known only at scrape time; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        state = self.state
        streams = state.pipeline.snapshot()
        labels = ["stream", "kind"]

        def family(kind: type, name: str, doc: str) -> Any:
            return kind(name, doc, labels=labels)

        lines = family(CounterMetricFamily, "nodetap_lines_read", "Lines read from the node's files.")
        nbytes = family(CounterMetricFamily, "nodetap_bytes_read", "Bytes read from the node's files.")
        stored_rows = family(CounterMetricFamily, "nodetap_rows", "Rows committed to DuckDB.")
        rejects = family(CounterMetricFamily, "nodetap_rejects", "Malformed lines quarantined in `rejects`.")
        gaps = family(CounterMetricFamily, "nodetap_gaps", "Byte ranges of the node's files skipped, lost or "
                      "read again: the rows of `gaps` but stalls (reason `stall`, not counted).")
        skipped = family(CounterMetricFamily, "nodetap_skipped_bytes", "Bytes skipped by the backlog limit.")
        lag_bytes = family(GaugeMetricFamily, "nodetap_lag_bytes",
                           "Bytes in the node's files after the cursor, measured when scraped.")
        lag_seconds = family(GaugeMetricFamily, "nodetap_lag_seconds",
                             "Wall clock minus the stream's last event time; absent in archive mode "
                             "(the node is not writing).")
        arrival = family(GaugeMetricFamily, "nodetap_arrival_lines_per_second",
                         "How fast the node writes lines: file growth over the last ~10 s divided by "
                         "the mean bytes per line seen.")
        capacity = family(GaugeMetricFamily, "nodetap_capacity_lines_per_second",
                          "How fast nodetap processes: lines per second of lane busy time "
                          "(parse+shape+commit), over the last batches, at the batch sizes in use "
                          "(small while caught up, so far below what a lane behind reaches).")
        mode = GaugeMetricFamily(
            "nodetap_stream_mode", "1 for the stream's mode: live (caught up or near), catching_up "
            "(behind, node still writing), archive (everything read, newest file unchanged > 1 h), "
            "stopped (its lane ended on an error: the stream is no longer read).",
            labels=[*labels, "mode"])
        for st in streams:
            values = [st.stream, st.kind]
            lines.add_metric(values, st.lines)
            nbytes.add_metric(values, st.bytes)
            stored_rows.add_metric(values, st.rows)
            rejects.add_metric(values, st.rejects)
            gaps.add_metric(values, st.gaps)
            skipped.add_metric(values, st.skipped_bytes)
            lag_bytes.add_metric(values, st.lag_bytes)
            if st.lag_seconds is not None:
                lag_seconds.add_metric(values, st.lag_seconds)
            arrival.add_metric(values, st.arrival_lines_per_s)
            capacity.add_metric(values, st.capacity_lines_per_s)
            for m in get_args(Mode):
                mode.add_metric([*values, m], int(st.mode == m))
        yield from (lines, nbytes, stored_rows, rejects, gaps, skipped, lag_bytes, lag_seconds,
                    arrival, capacity, mode)

        since = ", since start or the last change of the rules (which resets the counter)."
        seen = CounterMetricFamily("nodetap_rules_rows_seen", "Order rows each filter rule examined" + since,
                                   labels=["rule"])
        kept = CounterMetricFamily("nodetap_rules_rows_kept",
                                   "Order rows that passed each filter rule" + since, labels=["rule"])
        for rule, counts in sorted(state.rules.stats().items()):
            seen.add_metric([rule], counts.get("seen", 0))
            kept.add_metric([rule], counts.get("kept", 0))
        yield from (seen, kept)
        yield GaugeMetricFamily("nodetap_rules_file_valid", "0 while the rules file's last change "
                                "is invalid (the previous rules stay in effect; see /v1/status).",
                                value=int(state.rules.error is None))

        yield GaugeMetricFamily("nodetap_pipeline_up",
                                "1 while the ingest thread and every stream's lane run.",
                                value=int(state.pipeline.alive))
        yield GaugeMetricFamily("nodetap_sealer_up", "1 while the lake sealer runs (it seals "
                                "complete hours into Parquet).",
                                value=int(state.pipeline.sealer_health().alive))
        yield from _hub_metrics(state)


# the live hub's numbers (`Hub.stats()`): help text, and whether each is a running total
_HUB_METRICS: dict[str, tuple[str, bool]] = {
    "clients_connected": ("WebSocket clients connected.", False),
    "subscriptions": ("Live subscriptions held by connected clients.", False),
    "messages_sent": ("Live messages written to clients.", True),
    "messages_dropped": ("Live messages dropped for clients that lag (each is told in a `lagged` "
                         "notice).", True),
    "lagged_disconnects": ("Clients disconnected for lagging longer than ws_max_lag_s.", True),
    "aborted_disconnects": ("Connections cut because a lagging client did not take its close frame.",
                            True),
    "subscriptions_refused": ("Subscriptions refused at the per-connection cap (ws_max_subscriptions).",
                              True),
    "unsent_bytes": ("Bytes written or queued for clients and not yet taken by them.", False),
    "batches_published": ("Committed batches that yielded live messages.", True),
    "feed_errors": ("Live messages not built because building them failed (a subscription's filter or "
                    "format); each kind of failure is logged once, and the batch's other messages "
                    "still go out.", True),
}


def _hub_metrics(state: AppState) -> Iterator[Metric]:
    """The live hub's numbers: WebSocket clients, messages sent and dropped, feed failures."""
    for key, value in sorted(state.hub.stats().items()):
        name = key.removesuffix("_total")
        doc, total = _HUB_METRICS.get(name, (f"WebSocket hub: {name}.", key.endswith("_total")))
        family = CounterMetricFamily if total else GaugeMetricFamily
        yield family("nodetap_ws_" + name, doc, value=float(value))


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs inside the app's lifespan, once the pipeline exists: set up the metrics."""
    state: AppState = app.state.nodetap
    metrics = Metrics(state)
    app.state.nodetap_metrics = metrics
    state.pipeline.listeners.append(metrics.observe)
    try:
        yield
    finally:
        if metrics.observe in state.pipeline.listeners:
            state.pipeline.listeners.remove(metrics.observe)


router = APIRouter(lifespan=lifespan)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    registry: CollectorRegistry = request.app.state.nodetap_metrics.registry
    body = await asyncio.to_thread(generate_latest, registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz")
async def healthz(state: State) -> Response:
    """200 while the process serves and its ingest thread runs."""
    if not state.pipeline.alive:
        return json_response({"status": "down", "reason": _down(state)}, 503)
    return json_response({"status": "ok"})


def _down(state: AppState) -> str:
    dead = state.pipeline.dead_lanes()
    if dead:
        return (f"the lane of {', '.join(dead)} has stopped on an error (event=lane_error in the log): "
                "that stream is no longer read; restart nodetap")
    return "the pipeline thread has stopped"


@router.get("/readyz")
async def readyz(state: State) -> Response:
    """200 when the sealer runs and every stream is caught up: a stream with unread bytes whose
    last commit is older than `ready_max_lag_s`, or a stopped sealer, makes it 503, with the
    reason."""
    reasons, streams, sealer = await asyncio.to_thread(_readiness, state)
    body: dict[str, Any] = {"streams": streams, "sealer": sealer.as_dict()}
    if reasons:
        return json_response({"status": "not ready", "reasons": reasons, **body}, 503)
    return json_response({"status": "ready", **body})


def _readiness(state: AppState) -> tuple[list[str], dict[str, dict[str, Any]], SealerHealth]:
    bound = state.settings.ready_max_lag_s
    pipeline = state.pipeline
    reasons: list[str] = []
    if not pipeline.alive:
        reasons.append(_down(state))
    sealer = pipeline.sealer_health()
    if not sealer.alive:
        reasons.append(f"the lake sealer has stopped ({sealer.last_error or 'not running'}): complete "
                       "hours are no longer sealed into the lake; restart nodetap")
    streams: dict[str, dict[str, Any]] = {}
    for st in pipeline.snapshot():
        unread, age = st.lag_bytes, st.last_batch_age_s
        streams[st.stream] = {"unread_bytes": unread, "last_commit_age_s": age}
        # an archive's unread bytes are a cut last line that nothing will finish (etl/status.py)
        if unread > 0 and st.mode != "archive" and (age is None or age > bound):
            since = "no commit yet" if age is None else f"last commit {age:.1f} s ago"
            reasons.append(f"{st.stream}: {unread} unread bytes and {since} "
                           f"(over ready_max_lag_s = {bound:g} s)")
    return reasons, streams, sealer
