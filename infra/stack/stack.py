"""``up``, ``down`` and ``status`` of the local stack.

>>> from infra.settings import load_settings
>>> settings = load_settings()
>>> report = up(settings)                            # doctest: +SKIP
>>> [part.name for part in status(settings).parts]   # doctest: +SKIP
['kafka', 'redis', 'mlflow', 'prometheus', 'alertmanager']
>>> [alert.name for alert in status(settings).alerts]  # doctest: +SKIP
['TributaryApiDown']
>>> down(settings)                                   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from infra.errors import StackError, TributaryError
from infra.settings import Settings
from infra.stack.alerting import ActiveAlert, active_alerts
from infra.stack.kafka_admin import TopicOffsets, ensure_topics, topic_offsets
from infra.stack.parts import MONITORING_PARTS, stack_parts
from infra.stack.process import (
    STOP_GRACE_S,
    Layout,
    Part,
    live_pid,
    preflight,
    recorded_address,
    start_parts,
    stop_launched,
)
from infra.stack.procfs import stop_groups

AfterStart = Callable[[Settings], str | None]
"""Runs once the stack is healthy; may return a line to show the user."""

Action = Literal["started", "already running", "external", "stopped"]
State = Literal["running", "stopped", "external"]


@dataclass(frozen=True)
class PartAction:
    """What ``up`` or ``down`` did with one part."""

    name: str
    address: str
    action: Action
    pid: int | None


@dataclass(frozen=True)
class UpReport:
    parts: list[PartAction]
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PartStatus:
    name: str
    address: str
    pid: int | None
    state: State
    healthy: bool
    detail: str


@dataclass(frozen=True)
class StackStatus:
    """Parts, topics and, when Prometheus answers, the alerts it holds (firing and pending)."""

    parts: list[PartStatus]
    topics: list[TopicOffsets]
    topics_error: str | None = None
    alerts: list[ActiveAlert] = field(default_factory=list)
    alerts_error: str | None = None

    def part(self, name: str) -> PartStatus:
        return next(part for part in self.parts if part.name == name)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def up(
    settings: Settings,
    *,
    monitoring: bool = True,
    after_start: Sequence[AfterStart] = (),
    timeouts: Mapping[str, float] | None = None,
) -> UpReport:
    """Start every loopback part not already running, create the topics, run the hooks.

    Ports are checked before anything starts. All or nothing: if a part fails
    to become healthy, or topic creation or a hook fails, the parts this call
    started are stopped again, so no half-started stack is left; parts that
    were already running are left alone. Raises :class:`StackError`.
    ``monitoring=False`` leaves Prometheus and Alertmanager out.
    """
    layout = Layout(settings.state_dir)
    parts = stack_parts(settings, monitoring=monitoring, timeouts=timeouts)
    actions, to_start = _plan(parts, layout)
    preflight(to_start)
    launched = start_parts(to_start, layout)
    try:
        notes = _after_start(settings, after_start)
    except BaseException:
        stop_launched(launched, layout)
        raise
    actions += [
        PartAction(item.part.name, str(item.part.address), "started", item.pid) for item in launched
    ]
    order = [part.name for part in parts]
    return UpReport(sorted(actions, key=lambda a: order.index(a.name)), notes)


def _plan(parts: Sequence[Part], layout: Layout) -> tuple[list[PartAction], list[Part]]:
    actions: list[PartAction] = []
    to_start: list[Part] = []
    for part in parts:
        if part.external:
            actions.append(PartAction(part.name, str(part.address), "external", None))
            continue
        pid = live_pid(part, layout)
        if pid is not None:
            _check_same_address(part, pid, layout)
            actions.append(PartAction(part.name, str(part.address), "already running", pid))
            continue
        layout.pid_path(part.name).unlink(missing_ok=True)  # stale: process gone or pid reused
        to_start.append(part)
    return actions, to_start


def _check_same_address(part: Part, pid: int, layout: Layout) -> None:
    was = recorded_address(layout.pid_path(part.name))
    if was is not None and was != str(part.address):
        raise StackError(
            f"{part.name}: already running (pid {pid}) on {was}, but the settings say "
            f"{part.address}; run `tributary down` first"
        )


def _after_start(settings: Settings, hooks: Sequence[AfterStart]) -> list[str]:
    topics = settings.all_topics()
    created = ensure_topics(settings.kafka_bootstrap, topics, settings.topic_partitions)
    notes = [f"topics: {len(created)} created, {len(topics) - len(created)} already there"]
    for hook in hooks:
        try:
            note = hook(settings)
        except TributaryError:
            raise
        except Exception as error:
            name = getattr(hook, "__name__", "after-start hook")
            raise StackError(f"{name}: {error}") from error
        if note:
            notes.append(note)
    return notes


def down(settings: Settings) -> list[PartAction]:
    """Stop what ``up`` started (found through pid files); idempotent.

    Returns the parts it stopped; an empty list means nothing was running.
    """
    layout = Layout(settings.state_dir)
    running: list[tuple[Part, int]] = []
    for part in stack_parts(settings):
        pid = live_pid(part, layout)
        if pid is None:
            layout.pid_path(part.name).unlink(missing_ok=True)
        else:
            running.append((part, pid))
    stop_groups([pid for _, pid in running], STOP_GRACE_S)
    for part, _ in running:
        layout.pid_path(part.name).unlink(missing_ok=True)
    return [PartAction(part.name, str(part.address), "stopped", pid) for part, pid in running]


def status(settings: Settings) -> StackStatus:
    """Each part's state and health; the topics with their end offsets when Kafka answers;
    the alerts Prometheus holds when it answers.

    Prometheus and Alertmanager are listed only when ``up`` left a pid file for
    them, so a stack started with ``--no-monitoring`` does not show them stopped.
    """
    layout = Layout(settings.state_dir)
    parts = [
        part
        for part in stack_parts(settings)
        if part.name not in MONITORING_PARTS or layout.pid_path(part.name).exists()
    ]
    # Checks run side by side so an unanswering part costs one timeout, not one each.
    with ThreadPoolExecutor(max_workers=len(parts)) as pool:
        states = list(pool.map(lambda part: _part_status(part, layout), parts))
    topics: list[TopicOffsets] = []
    error: str | None = None
    kafka = next(state for state in states if state.name == "kafka")
    if kafka.healthy:
        try:
            topics = topic_offsets(settings.kafka_bootstrap)
        except StackError as failure:
            error = failure.message
    alerts: list[ActiveAlert] = []
    alerts_error: str | None = None
    if any(state.name == "prometheus" and state.healthy for state in states):
        try:
            alerts = active_alerts(settings.prometheus_address)
        except StackError as failure:
            alerts_error = failure.message
    return StackStatus(states, topics, error, alerts, alerts_error)


def _part_status(part: Part, layout: Layout) -> PartStatus:
    pid = None if part.external else live_pid(part, layout)
    state: State = "external" if part.external else "running" if pid else "stopped"
    if state == "stopped":
        return PartStatus(part.name, str(part.address), None, state, False, "not running")
    health = part.health()
    return PartStatus(part.name, str(part.address), pid, state, health.ok, health.detail)
