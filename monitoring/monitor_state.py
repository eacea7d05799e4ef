"""The monitor's state: open windows, the outcome join, watermarks, detectors, the sequence.

:class:`MonitorState` needs no Bytewax: the dataflow (:mod:`monitoring.monitor_flow`)
hands it the parsed pieces of each Kafka batch in order, the unit tests and the
benchmark hand it lists. It emits :class:`~monitoring.windows.MonitorRecord`
objects, each with the next ``seq``:

- **predictions**, when a window of a version closes: when the low watermark of
  the ``ml.predictions`` partitions (oldest partition's newest ``ts`` minus
  ``allowed_lateness_s``) reaches the window's end; or, when no prediction
  partition delivered for ``idle_close_s`` of wall clock, every open window at
  once; or at the end of the input (``tail=False``). A piece of a window that
  already closed is dropped and counted (``late_prediction``).
- **outcomes**, when the window's labels are complete
  (:meth:`~monitoring.outcomes.OutcomeJoin.ready`, on the ``shop.events``
  watermark). Labels are never forced: at the end of the input, windows still
  waiting for labels stay in the state (and its snapshot) for the next run.

``seq`` lives in the state, so after a restore the replayed records get the
numbers they had, which is what makes the Delta sink exactly-once.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from infra.settings import MonitoringSettings
from monitoring.concept import ConceptDriftDetector
from monitoring.outcomes import OutcomeJoin, outcome_metrics
from monitoring.records import LoggedRequest, OutcomeEvent
from monitoring.windows import (
    MonitorRecord,
    PartitionClock,
    WindowAggregate,
    WindowKey,
    prediction_stats,
    reference_summary,
)
from training.profiles import ReferenceProfile

SNAPSHOT_FORMAT: Final = 1
ProfileLookup = Callable[[int], ReferenceProfile | None]
Pieces = dict[WindowKey, tuple[WindowAggregate, list[LoggedRequest]]]


@dataclass(frozen=True, slots=True)
class PredictionPart:
    """One Kafka batch of ``ml.predictions``, parsed: pieces per (version, window)."""

    part: str
    newest: float | None  # newest ts of its accepted records
    pieces: Pieces


@dataclass(frozen=True, slots=True)
class EventPart:
    """One Kafka batch of ``shop.events``: the join's events and the newest valid event time."""

    part: str
    newest: float | None
    events: list[OutcomeEvent]


Part = PredictionPart | EventPart


class MonitorState:
    """Everything the monitor remembers; see the module doc."""

    def __init__(self, knobs: MonitoringSettings, model_name: str) -> None:
        self.window_s = knobs.window_s
        self.model_name = model_name
        self.seq = 0
        self.windows: dict[WindowKey, WindowAggregate] = {}
        self.closed_through: dict[int, float] = {}  # per version: every window ending by it
        self.watermark = -math.inf  # highest prediction low watermark applied
        self.late_requests = 0
        self.predictions = PartitionClock(knobs.allowed_lateness_s, knobs.idle_close_s)
        self.events = PartitionClock(knobs.outcome_lateness_s, knobs.idle_close_s)
        self.join = OutcomeJoin(
            lateness_s=knobs.outcome_lateness_s,
            max_pending=knobs.max_pending_requests,
            label_window_s=knobs.label_window_s,
            show_window_s=knobs.show_window_s,
        )
        self.detectors: dict[int, ConceptDriftDetector] = {}
        self.profiles: ProfileLookup = _no_profiles

    def attach(
        self,
        profiles: ProfileLookup,
        prediction_parts: Iterable[str],
        event_parts: Iterable[str],
        wall: float,
    ) -> None:
        """Give a new or restored state its profile lookup and the input's partitions."""
        self.profiles = profiles
        self.predictions.restart(wall)
        self.events.restart(wall)
        self.predictions.expect(prediction_parts, wall)
        self.events.expect(event_parts, wall)

    # -- input -------------------------------------------------------------------

    def consume(self, parts: Sequence[Part], wall: float) -> list[MonitorRecord]:
        """The parsed pieces of Kafka batches, in the order each partition holds them."""
        out: list[MonitorRecord] = []
        for part in parts:
            if isinstance(part, PredictionPart):
                self._predictions(part, wall)
                out += self._close_due(wall)
            else:
                self.join.consume(part.part, part.events, part.newest)
                self.events.advance(part.part, part.newest, wall)
            out += self._outcomes_due(wall)
        return out

    def _predictions(self, part: PredictionPart, wall: float) -> None:
        for key, (piece, requests) in part.pieces.items():
            version, start = key
            end = start + self.window_s
            if end <= max(self.watermark, self.closed_through.get(version, -math.inf)):
                self.late_requests += piece.requests
                continue
            window = self.windows.get(key)
            if window is None:  # a copy: the piece belongs to its sender
                window = self.windows[key] = WindowAggregate()
            window.merge(piece)
            self.join.add_requests(key, end, requests)
        self.predictions.advance(part.part, part.newest, wall)

    # -- closing -------------------------------------------------------------------

    def on_idle(self, wall: float) -> list[MonitorRecord]:
        """Wall-clock check: windows due now that some partitions went quiet, or all open
        ones when every prediction partition did."""
        out = self._close_due(wall)
        if self.windows and self.predictions.low(wall) is None:
            out += self._close(list(self.windows), wall)
        return out + self._outcomes_due(wall)

    def finish(self, wall: float) -> list[MonitorRecord]:
        """The input ended: close every open window; outcomes only where labels are complete."""
        return self._close(list(self.windows), wall) + self._outcomes_due(wall)

    def next_wakeup(self, wall: float) -> float | None:
        """When (wall clock) :meth:`on_idle` may close something; None when nothing is open."""
        return self.predictions.next_idle(wall) if self.windows else None

    def _close_due(self, wall: float) -> list[MonitorRecord]:
        low = self.predictions.low(wall)
        if low is None or low <= self.watermark:
            return []
        self.watermark = low
        self.join.expire_orphans(low - self.window_s)
        due = [key for key in self.windows if key[1] + self.window_s <= low]
        return self._close(due, wall)

    def _close(self, keys: list[WindowKey], wall: float) -> list[MonitorRecord]:
        out = []
        for key in sorted(keys, key=lambda k: (k[1], k[0])):
            version, start = key
            end = start + self.window_s
            window = self.windows.pop(key)
            self.closed_through[version] = max(end, self.closed_through.get(version, -math.inf))
            self.join.close(key)
            profile = self.profiles(version)
            found = prediction_stats(window, profile)
            record = self._record("predictions", key, wall, found.metrics)
            out.append(
                replace(
                    record,
                    features=found.features,
                    score_shares=found.score_shares,
                    reference_shares=found.reference_shares,
                    feature_ages=found.feature_ages,
                    reference=reference_summary(profile),
                )
            )
        return out

    def _outcomes_due(self, wall: float) -> list[MonitorRecord]:
        low = self.events.low(wall)
        if low is None:
            return []
        self.join.expire_requests(low)
        out = []
        for key in self.join.ready(low):
            tally = self.join.pop(key)
            detector = self.detectors.get(key[0])
            if detector is None:
                detector = self.detectors[key[0]] = ConceptDriftDetector()
            metrics, detections = outcome_metrics(tally, detector)
            out.append(replace(self._record("outcomes", key, wall, metrics), detections=detections))
        return out

    def _record(
        self, phase: str, key: WindowKey, wall: float, metrics: dict[str, float]
    ) -> MonitorRecord:
        version, start = key
        return MonitorRecord(
            phase, self._next_seq(), self.model_name, version, start, start + self.window_s,
            wall, metrics,
        )  # fmt: skip

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    # -- reading -------------------------------------------------------------------

    def dropped(self) -> dict[str, int]:
        """Running totals of what could not be used, by reason (the dropped-records metric)."""
        counters = self.join.counters
        return {
            "late_prediction": self.late_requests,
            "late_impression": counters.late,
            "unattributed_impression": counters.unattributed,
            "unmatched_impression": counters.unmatched,
            "evicted_request": counters.evicted_requests,
            "evicted_impression": counters.evicted_impressions,
            "evicted_orphan": counters.evicted_orphans,
        }

    def held(self) -> dict[str, int]:
        """What the join holds now, by kind (bounded by ``max_pending_requests`` each)."""
        join = self.join
        return {"requests": len(join.requests), "impressions": join.pending,
                "orphans": join.orphan_count}  # fmt: skip

    # -- snapshots -----------------------------------------------------------------

    def snapshot(self) -> bytes:
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, data: bytes) -> MonitorState:
        state = pickle.loads(data)  # our own recovery snapshot
        if not isinstance(state, cls):
            raise TypeError(f"not a {cls.__name__} snapshot: {type(state).__name__}")
        return state

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k != "profiles"}
        state["format"] = SNAPSHOT_FORMAT
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved_format = state.pop("format", None)
        if saved_format != SNAPSHOT_FORMAT:
            raise ValueError(f"monitor snapshot format {saved_format}, expected {SNAPSHOT_FORMAT}")
        self.__dict__.update(state)
        self.profiles = _no_profiles


def _no_profiles(version: int) -> ReferenceProfile | None:
    return None
