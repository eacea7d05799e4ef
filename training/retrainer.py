"""``tributary run retrainer``: retrain on request, gate, promote — one job at a time.

Jobs come from two places: ``ml.retrain`` messages (``{"reason": ..., "kind":
"torch"|"river", "window_days": ...}``, from a person, or from Alertmanager
through the receiver's ``/alertmanager`` route with ``evidence`` and an
``incident``) and the registry webhook (a version became ``challenger``: gate
it). One thread handles them in order, so at most one training or gating runs
at a time; a lock file extends that to several worker processes on one machine.

A retrain trains on the recent window, tags the version and its run with the
reason and evidence (``retrain_reason``, ``retrain_incident``,
``retrain_evidence``: a champion says why it exists), marks it ``challenger``,
runs the gates and promotes on success. It is skipped while the last promoted
or rejected retrain is younger than ``retrain_cooldown_s`` (kept in the
registered model's ``last_retrain`` tag, so a restart remembers it), and when
a version was already trained for the request's incident. Errors are retried
``retrain_attempts`` times with exponential backoff; every outcome is logged as
one JSON line, counted in ``tributary_retrain_runs_total{job,outcome}`` and
kept in the ``last_retrain`` tag. A malformed request goes to ``shop.dlq`` with
a reason; the Kafka position is committed only after its job is done, so a
crash re-runs it. MLflow delivers webhooks best effort, so the worker also
checks the ``challenger`` alias every 30 seconds and gates a challenger that
was never gated. The worker serves its Prometheus metrics on ``metrics_port`` +
:data:`METRICS_OFFSET` (announced to Prometheus as ``process="retrainer-0"``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal
from wsgiref.simple_server import WSGIServer

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition
from prometheus_client import Counter, start_http_server
from pydantic import ValidationError

from infra.contracts.dlq import DlqHeaders
from infra.contracts.rejections import RejectionReason
from infra.kafka.producer import Producer
from infra.settings import Settings
from training.promotion import GateFailedError, PromotionReport, promote
from training.registry import CHALLENGER, Registry
from training.retrain_request import INCIDENT_TAG, RetrainRequest, retrain_tags
from training.train import TrainReport, TrainRequest, train

_LOG = logging.getLogger("training.retrainer")
LAST_RETRAIN_TAG: Final = "last_retrain"
CHALLENGER_CHECK_S: Final = 30.0
# metrics_port + 50 is where the runner puts flows it has no offset for
METRICS_OFFSET: Final = 60
RUNS = Counter("tributary_retrain_runs", "Retrain and gate jobs by outcome.", ["job", "outcome"])
Outcome = Literal["promoted", "rejected", "skipped", "failed", "invalid"]
__all__ = ["JobResult", "RetrainRequest", "RetrainTopic", "RetrainWorker", "run_worker"]


@dataclass
class JobResult:
    job: Literal["retrain", "gate"]
    outcome: Outcome
    detail: str
    version: int | None = None
    attempts: int = 0
    incident: str | None = None
    finished_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())

    def to_json(self) -> str:
        return json.dumps(asdict(self))


Trainer = Callable[[Settings, TrainRequest], TrainReport]
Promoter = Callable[[Settings, int], PromotionReport]


class RetrainWorker:
    """Handles jobs one at a time; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        trainer: Trainer = train,
        promoter: Promoter = promote,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.trainer = trainer
        self.promoter = promoter
        self.sleep = sleep
        self.clock = clock
        self.gate_jobs: queue.Queue[int] = queue.Queue()
        self.results: list[JobResult] = []
        self.lock_path = settings.state_dir / "locks" / f"{settings.profile}-retrainer.lock"

    # -- jobs ----------------------------------------------------------------

    def retrain(self, request: RetrainRequest) -> JobResult:
        registry = Registry(self.settings)
        skipped = self._why_skip(registry, request)
        if skipped is not None:
            return self._finish(registry, skipped)
        with self._exclusive():
            result = self._with_retries("retrain", lambda: self._train_and_promote(request))
        result.incident = request.incident
        return self._finish(registry, result)

    def _why_skip(self, registry: Registry, request: RetrainRequest) -> JobResult | None:
        """A ``skipped`` result when the request must not train now, else None."""
        if request.incident is not None:
            # a request produced twice (a publish whose acknowledgement was lost)
            done = registry.latest(**{INCIDENT_TAG: request.incident})
            if done is not None:
                detail = f"incident {request.incident} already trained v{done.version}"
                return JobResult("retrain", "skipped", detail, done.version,
                                 incident=request.incident)  # fmt: skip
        waited = self._cooldown_left(registry)
        if waited > 0:
            detail = f"cooldown: {waited:.0f} s left ({request.reason})"
            return JobResult("retrain", "skipped", detail, incident=request.incident)
        return None

    def gate(self, version: int) -> JobResult:
        """Gate a version that became challenger; promote it when every gate passes."""
        registry = Registry(self.settings)
        if registry.version(version).tags.get("gates"):
            return self._record(JobResult("gate", "skipped", "already gated", version))
        with self._exclusive():
            result = self._with_retries("gate", lambda: self._promote(version))
        return self._record(result)

    def _train_and_promote(self, request: RetrainRequest) -> JobResult:
        report = self.trainer(
            self.settings,
            TrainRequest(kind=request.kind, window_days=request.window_days, progress=False),
        )
        registry = Registry(self.settings)
        tags = retrain_tags(request)
        # before the alias, so the version says why it exists from its first gate on
        registry.set_tags(report.version, tags)
        if report.run_id:
            for key, value in tags.items():
                registry.client.set_tag(report.run_id, key, value)
        registry.set_alias(CHALLENGER, report.version)
        result = self._promote(report.version)
        result.job = "retrain"
        result.detail = f"{request.reason}: {result.detail}"
        return result

    def _promote(self, version: int) -> JobResult:
        try:
            promoted = self.promoter(self.settings, version)
        except GateFailedError as failure:
            return JobResult("gate", "rejected", str(failure), version)
        detail = f"v{version} is champion (was {promoted.previous_champion})"
        return JobResult("gate", "promoted", detail, version)

    def _with_retries(
        self, job: Literal["retrain", "gate"], run: Callable[[], JobResult]
    ) -> JobResult:
        attempts = self.settings.training.retrain_attempts
        for attempt in range(1, attempts + 1):
            try:
                result = run()
                result.attempts = attempt
                return result
            except Exception as error:
                _LOG.warning("%s attempt %d/%d failed: %s", job, attempt, attempts, error)
                if attempt == attempts:
                    detail = f"{type(error).__name__}: {error}"
                    return JobResult(job, "failed", detail, attempts=attempt)
                self.sleep(self.settings.training.retrain_backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    # -- bookkeeping -----------------------------------------------------------

    def _cooldown_left(self, registry: Registry) -> float:
        last = _last_success(registry)
        if last is None:
            return 0.0
        return self.settings.training.retrain_cooldown_s - (self.clock() - last)

    def _finish(self, registry: Registry, result: JobResult) -> JobResult:
        now = self.clock()
        # the tag holds the latest job only: carry the cooldown's start past
        # skipped and failed jobs, or a third request would train at once
        fresh = result.outcome in ("promoted", "rejected")
        record = {**asdict(result), "at": now,
                  "cooldown_from": now if fresh else _last_success(registry)}  # fmt: skip
        try:
            registry.client.set_registered_model_tag(
                registry.name, LAST_RETRAIN_TAG, json.dumps(record)
            )
        except Exception as error:
            _LOG.warning("could not record the retrain outcome: %s", error)
        return self._record(result)

    def _record(self, result: JobResult) -> JobResult:
        RUNS.labels(result.job, result.outcome).inc()
        self.results.append(result)
        _LOG.info("%s", result.to_json())
        print(result.to_json(), flush=True)
        return result

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock_path.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _last_success(registry: Registry) -> float | None:
    try:
        raw = registry.client.get_registered_model(registry.name).tags.get(LAST_RETRAIN_TAG)
    except Exception:
        return None
    if not raw:
        return None
    record: dict[str, Any] = json.loads(raw)
    # a rejected model still means fresh data was tried: cool down after it too
    if record.get("outcome") in ("promoted", "rejected"):
        return float(record.get("at", 0.0))
    since = record.get("cooldown_from")
    return None if since is None else float(since)


class RetrainTopic:
    """``ml.retrain`` read by assignment from the group's committed positions."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topic = settings.topic(settings.topics.retrain)
        self.consumer = Consumer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"tributary-{settings.profile}-retrainer",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        })  # fmt: skip
        partitions = sorted(self.consumer.list_topics(self.topic, timeout=10).topics[self.topic]
                            .partitions)  # fmt: skip
        committed = self.consumer.committed(
            [TopicPartition(self.topic, p) for p in partitions], timeout=10
        )
        self.consumer.assign([
            TopicPartition(self.topic, tp.partition, tp.offset if tp.offset >= 0
                           else OFFSET_BEGINNING)
            for tp in committed
        ])  # fmt: skip
        self.dlq = Producer(settings)

    def poll(self, timeout: float) -> tuple[RetrainRequest | None, Message | None]:
        """The next request; (None, message) for one that went to the DLQ."""
        message = self.consumer.poll(timeout)
        if message is None or message.error() is not None:
            return None, None
        try:
            return RetrainRequest.model_validate_json(message.value() or b""), message
        except ValidationError as error:
            self._dead_letter(message, error)
            return None, message

    def commit(self, message: Message) -> None:
        self.consumer.commit(message=message, asynchronous=False)

    def _dead_letter(self, message: Message, error: ValidationError) -> None:
        first = error.errors()[0]
        reason = (RejectionReason.MALFORMED_JSON if first["type"] == "json_invalid"
                  else RejectionReason.INVALID_VALUE)  # fmt: skip
        headers = DlqHeaders(
            reason=reason, detail=f"ml.retrain: {first['msg']}"[:500],
            source_topic=message.topic() or self.topic, source_partition=message.partition() or 0,
            source_offset=message.offset() or 0,
        )  # fmt: skip
        self.dlq.send(self.settings.topic(self.settings.topics.dlq), message.value() or b"",
                      headers=list(headers.to_kafka()))  # fmt: skip
        self.dlq.close(10)
        self.dlq = Producer(self.settings)

    def close(self) -> None:
        self.consumer.close()


def _queue_ungated_challenger(worker: RetrainWorker) -> None:
    challenger = Registry(worker.settings).alias(CHALLENGER)
    if challenger is not None and not challenger.tags.get("gates"):
        worker.gate_jobs.put(challenger.version)


def run_worker(
    settings: Settings,
    stop: threading.Event,
    webhook_port: int | None = None,
    metrics_port: int | None = None,
) -> None:
    """The worker loop: webhook gate jobs first, then ``ml.retrain``, until ``stop`` is set.

    ``metrics_port`` None means ``settings.metrics_port`` + :data:`METRICS_OFFSET`
    (nothing when ``metrics_port`` is 0 in the settings); 0 means any free port.
    """
    from training.alert_receiver import ALERT_PATH, AlertReceiver
    from training.incidents import IncidentLedger, RetrainPublisher
    from training.webhook import WebhookReceiver, ensure_webhook

    worker = RetrainWorker(settings)
    ledger, publisher = IncidentLedger(settings), RetrainPublisher(settings)
    alerts = AlertReceiver(settings, ledger, publisher)
    receiver = WebhookReceiver(settings, worker.gate_jobs.put, port=webhook_port,
                               routes={ALERT_PATH: alerts}).start()  # fmt: skip
    metrics = serve_worker_metrics(settings, metrics_port)
    try:
        ensure_webhook(settings, receiver.url)
        topic = RetrainTopic(settings)
        _LOG.info("retrainer listening on %s, %s and %s%s", topic.topic, receiver.url,
                  receiver.base_url, ALERT_PATH)  # fmt: skip
        try:
            _work(worker, topic, stop)
        finally:
            topic.close()
    finally:
        receiver.stop()
        publisher.close()
        ledger.close()
        if metrics is not None:
            metrics.shutdown()
            metrics.server_close()


def _work(worker: RetrainWorker, topic: RetrainTopic, stop: threading.Event) -> None:
    next_check = 0.0
    while not stop.is_set():
        if time.monotonic() >= next_check:
            # deliveries are best effort: also look at the alias now and then
            _queue_ungated_challenger(worker)
            next_check = time.monotonic() + CHALLENGER_CHECK_S
        try:
            worker.gate(worker.gate_jobs.get_nowait())
            continue
        except queue.Empty:
            pass
        request, message = topic.poll(0.5)
        if request is not None:
            worker.retrain(request)
        if message is not None:
            topic.commit(message)


def serve_worker_metrics(settings: Settings, port: int | None = None) -> WSGIServer | None:
    """Serve this process's metrics on loopback and tell Prometheus (file discovery).

    A busy port costs the metrics, not the worker: it logs and carries on.
    """
    from flows.runner import announce_metrics

    if port is None:
        if not settings.metrics_port:
            return None
        port = settings.metrics_port + METRICS_OFFSET
    try:
        server, _ = start_http_server(port, addr="127.0.0.1")
    except OSError as error:
        _LOG.warning("retrainer metrics not served on port %d: %s", port, error)
        return None
    announce_metrics(settings, "retrainer-0", int(server.server_address[1]))
    return server
