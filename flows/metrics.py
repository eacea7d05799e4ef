"""Prometheus metrics of the dataflows, one set shared by every flow.

Each process serves them (with Bytewax's own, which use the same default
registry) on its metrics port; the ``flow`` label tells the flows apart.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from infra.errors import StackError

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_FRESHNESS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

EVENTS_IN = Counter("tributary_flow_events_in", "Messages read from Kafka.", ["flow", "topic"])
EVENTS_OUT = Counter(
    "tributary_flow_events_out", "Rows or messages written to a sink.", ["flow", "sink"]
)
REJECTS = Counter(
    "tributary_flow_rejects", "Messages refused by validation, by reason.", ["flow", "reason"]
)
DELTA_COMMIT_SECONDS = Histogram(
    "tributary_delta_commit_seconds",
    "Time to commit one micro-batch to a Delta table.",
    ["flow", "table"],
    buckets=_LATENCY_BUCKETS,
)
REDIS_WRITE_SECONDS = Histogram(
    "tributary_redis_write_seconds",
    "Time of one pipelined Redis write of a micro-batch.",
    ["flow"],
    buckets=_LATENCY_BUCKETS,
)
FRESHNESS_SECONDS = Histogram(
    "tributary_feature_freshness_seconds",
    "From an event's time to its contribution being readable in Redis.",
    ["flow", "view"],
    buckets=_FRESHNESS_BUCKETS,
)
LAST_PROCESSED = Gauge(
    "tributary_flow_last_processed_timestamp_seconds",
    "Wall-clock time a flow last finished a micro-batch (alert when stale).",
    ["flow"],
)


def serve_metrics(port: int) -> None:
    """Expose this process's metrics on 127.0.0.1:port (0 disables)."""
    if not port:
        return
    try:
        start_http_server(port, addr="127.0.0.1")
    except OSError as error:
        raise StackError(
            f"metrics port 127.0.0.1:{port} is taken ({error.strerror}): is this flow "
            "already running? Stop it, or move TRIBUTARY_METRICS_PORT"
        ) from error
