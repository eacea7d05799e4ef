"""The outcome join: which returned items were shown, then clicked or bought within 30 minutes.

A logged request's returned item is **shown** when an impression event carrying
the request's ``request_id`` and the item's ``product_id`` arrives, stamped at
most :data:`SHOW_WINDOW_S` after the request. A click, or a purchase, of that
product by that user within 30 minutes of the impression (event time, both ends
included) is its outcome. The impression's label is final once its partition's
watermark — the newest event time of its ``shop.events`` partition minus
``outcome_lateness_s`` — passes impression time + 30 minutes: a user's events
all live in one partition, in order, so labels depend on each partition's order
only, never on how partitions or topics interleave (the learner's argument,
:mod:`training.learner_state`).

The two topics are read independently, so an impression may arrive before its
request was logged (the API's log lingers, a replay reads one topic ahead). It
then waits as an *orphan*, is labelled all the same, and joins its request when
that arrives; an orphan whose request cannot come any more (its window closed)
is dropped and counted as ``unmatched``.

**Bounded state.** A request is kept until the events watermark passes its
time plus :data:`SHOW_WINDOW_S` (no impression can join it then), an
impression until its label is final. Requests, pending impressions and
orphans are each capped at ``max_pending`` (the setting
``max_pending_requests``); past a cap the oldest is dropped and counted
(``evicted_*``), never guessed: an evicted impression counts in its window's
``impressions`` but not in ``labelled``, CTR, conversion, AUC or log loss. An
impression that arrives after its own label window has passed is counted as
``late`` and not used.

**Why not the learner's join.** :class:`~training.learner_state.LearnerState`
joins impressions *without* request ids to purchases, and for each computes the
feature row as of its time from its own tiles, then learns test-then-train in
the order labels become final; its state is pickled into registered model
checkpoints. This join needs no features, counts clicks as well as purchases,
attributes every label to a request, a model version and a window, waits for
requests that arrive after their impressions, and bounds its state globally
rather than per user. Folding both into one class would couple the learner's
checkpoint format to the monitor and make every learner step pay for request
bookkeeping it does not use. What they share is the definition of a label:
:data:`~training.learner_state.LABEL_WINDOW_S` and the per-partition watermark.

>>> from monitoring.records import LoggedRequest, OutcomeEvent
>>> join = OutcomeJoin(lateness_s=60.0, max_pending=100)
>>> join.add_requests((3, 0.0), 300.0, [LoggedRequest("r1", 10.0, 3, ("p1", "p2"), (0.9, 0.2))])
>>> join.close((3, 0.0))
>>> join.consume("0-shop.events", [
...     OutcomeEvent("impression", 12.0, "u1", "p1", "r1"),
...     OutcomeEvent("click", 20.0, "u1", "p1", None),
...     OutcomeEvent("purchase", 900.0, "u1", "p1", None),
...     OutcomeEvent("add_to_cart", 4000.0, "u1", "p2", None)])
>>> join.ready(low_watermark=4000.0 - 60.0)
[(3, 0.0)]
>>> [(s.clicked, s.purchased, s.score) for s in join.pop((3, 0.0)).shown]
[(True, True, 0.9)]
"""

from __future__ import annotations

import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Final, NamedTuple

import numpy as np

from monitoring import stats
from monitoring.concept import ConceptDriftDetector, absolute_errors
from monitoring.records import LoggedRequest, OutcomeEvent
from monitoring.windows import WindowKey
from training.learner_state import LABEL_WINDOW_S

_COMPACT_SLACK: Final = 1024
SHOW_WINDOW_S: Final = 300.0
"""How long after a request its items may still be shown; a page shows within seconds."""


class _Shown:
    """An impression of a returned item: pending until its label window passes."""

    __slots__ = (
        "clicked", "done", "key", "orphan", "part", "product_id", "purchased", "request_id",
        "score", "ts", "user_id",
    )  # fmt: skip

    def __init__(
        self, part: str, ts: float, user_id: str, product_id: str, request_id: str
    ) -> None:
        self.part, self.ts, self.user_id = part, ts, user_id
        self.product_id, self.request_id = product_id, request_id
        self.clicked = self.purchased = False
        self.done = False  # labelled or dropped: lazily removed from the heaps
        self.orphan = False  # waiting for its request
        self.key: WindowKey | None = None
        self.score = 0.0


class Labelled(NamedTuple):
    """A shown item with its final outcome."""

    ts: float
    request_id: str
    product_id: str
    clicked: bool
    purchased: bool
    score: float


@dataclass(slots=True)
class OutcomeTally:
    """The outcomes of one window: complete once closed, quiet and with nothing pending."""

    version: int
    end: float
    closed: bool = False  # the prediction side closed: no more requests join
    pending: int = 0  # attributed impressions not labelled yet
    evicted: int = 0  # attributed impressions dropped at the cap
    requests: list[str] = field(default_factory=list)
    shown: list[Labelled] = field(default_factory=list)


@dataclass
class JoinCounters:
    """Running totals of the join, for the dropped-records metric."""

    impressions: int = 0  # impressions with a request id read
    attributed: int = 0
    labelled: int = 0
    late: int = 0
    unattributed: int = 0  # not an item of its request, or shown too long after it
    unmatched: int = 0  # its request never came
    evicted_requests: int = 0
    evicted_impressions: int = 0
    evicted_orphans: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Partition:
    __slots__ = ("expiry", "newest")

    def __init__(self) -> None:
        self.newest = float("-inf")
        self.expiry: list[tuple[float, int, _Shown]] = []


class OutcomeJoin:
    """Requests by id, pending impressions by (user, product), orphans by request id."""

    def __init__(
        self,
        *,
        lateness_s: float,
        max_pending: int,
        label_window_s: float = LABEL_WINDOW_S,
        show_window_s: float = SHOW_WINDOW_S,
    ) -> None:
        self.lateness_s = lateness_s
        self.max_pending = max_pending
        self.label_window_s = label_window_s
        self.show_window_s = show_window_s
        self.counters = JoinCounters()
        self.requests: OrderedDict[str, tuple[WindowKey, LoggedRequest]] = OrderedDict()
        self.tallies: dict[WindowKey, OutcomeTally] = {}
        self.partitions: dict[str, _Partition] = {}
        self.by_item: dict[tuple[str, str], list[_Shown]] = {}  # (user, product)
        self.pending = 0
        self._fifo: deque[_Shown] = deque()  # pending in arrival order, for the cap
        self.orphans: dict[str, list[_Shown]] = {}
        self.orphan_count = 0
        self._orphan_heap: list[tuple[float, int, _Shown]] = []
        self._seq = 0

    # -- requests --------------------------------------------------------------

    def add_requests(self, key: WindowKey, end: float, requests: Iterable[LoggedRequest]) -> None:
        """Requests of window ``key`` (ending at ``end``); orphans waiting for them join."""
        tally = self.tallies.get(key)
        if tally is None:
            tally = self.tallies[key] = OutcomeTally(key[0], end)
        for request in requests:
            rid = request.request_id
            if rid in self.requests:
                continue  # the same record logged twice
            self.requests[rid] = (key, request)
            tally.requests.append(rid)
            for shown in self.orphans.pop(rid, ()):
                shown.orphan = False
                self.orphan_count -= 1
                self._attach(shown, key, request, tally)
        while len(self.requests) > self.max_pending:
            self.requests.popitem(last=False)
            self.counters.evicted_requests += 1

    def expire_requests(self, low_watermark: float) -> None:
        """Forget requests no impression can join any more (shown only up to SHOW_WINDOW_S
        later); their shown items keep their window and score."""
        horizon = low_watermark - self.show_window_s
        requests = self.requests
        while requests and next(iter(requests.values()))[1].ts < horizon:
            requests.popitem(last=False)

    def close(self, key: WindowKey) -> None:
        """No more requests will join window ``key``."""
        tally = self.tallies.get(key)
        if tally is not None:
            tally.closed = True

    def _score(self, request: LoggedRequest, shown: _Shown) -> float | None:
        if shown.ts > request.ts + self.show_window_s:
            return None
        try:
            return request.scores[request.items.index(shown.product_id)]
        except ValueError:
            return None

    def _attach(
        self, shown: _Shown, key: WindowKey, request: LoggedRequest, tally: OutcomeTally
    ) -> None:
        score = self._score(request, shown)
        if score is None:
            self.counters.unattributed += 1
            self._drop(shown)
            return
        shown.key, shown.score = key, score
        self.counters.attributed += 1
        if shown.done:  # labelled while it waited
            tally.shown.append(_labelled(shown))
        else:
            tally.pending += 1

    # -- events ----------------------------------------------------------------

    def consume(
        self, part: str, events: Iterable[OutcomeEvent], newest: float | None = None
    ) -> None:
        """A partition's outcome events in its order; ``newest``: of all its valid events."""
        partition = self.partitions.get(part)
        if partition is None:
            partition = self.partitions[part] = _Partition()
        for event in events:
            if event.ts > partition.newest:
                partition.newest = event.ts
                self._expire(partition, event.ts - self.lateness_s)
            if event.kind == "impression":
                self._impression(part, partition, event)
            elif event.kind in ("click", "purchase"):
                self._mark(event)
        if newest is not None and newest > partition.newest:
            partition.newest = newest
            self._expire(partition, newest - self.lateness_s)

    def _impression(self, part: str, partition: _Partition, event: OutcomeEvent) -> None:
        self.counters.impressions += 1
        if event.ts + self.label_window_s < partition.newest - self.lateness_s:
            self.counters.late += 1
            return
        shown = _Shown(part, event.ts, event.user_id, event.product_id, event.request_id or "")
        entry = self.requests.get(shown.request_id)
        if entry is None:
            self._add_orphan(shown)
        else:
            key, request = entry
            score = self._score(request, shown)
            if score is None:
                self.counters.unattributed += 1
                return
            shown.key, shown.score = key, score
            self.tallies[key].pending += 1
            self.counters.attributed += 1
        self._hold(partition, shown)

    def _place(self, partition: _Partition, shown: _Shown) -> None:
        self.by_item.setdefault((shown.user_id, shown.product_id), []).append(shown)
        self._seq += 1
        heapq.heappush(partition.expiry, (shown.ts, self._seq, shown))
        self._fifo.append(shown)

    def _hold(self, partition: _Partition, shown: _Shown) -> None:
        self._place(partition, shown)
        self.pending += 1
        while self._fifo and self._fifo[0].done:
            self._fifo.popleft()
        if len(self._fifo) > 2 * self.pending + _COMPACT_SLACK:  # a stuck head holds done ones
            self._fifo = deque(s for s in self._fifo if not s.done)
        if self.pending > self.max_pending:
            oldest = self._fifo.popleft()
            self.counters.evicted_impressions += 1
            if oldest.key is not None:
                tally = self.tallies[oldest.key]
                tally.pending -= 1
                tally.evicted += 1
            self._drop(oldest)

    def _mark(self, event: OutcomeEvent) -> None:
        ts, window = event.ts, self.label_window_s
        for shown in self.by_item.get((event.user_id, event.product_id), ()):
            if shown.ts <= ts <= shown.ts + window:
                if event.kind == "click":
                    shown.clicked = True
                else:
                    shown.purchased = True

    def _expire(self, partition: _Partition, watermark: float) -> None:
        heap, window = partition.expiry, self.label_window_s
        while heap and heap[0][0] + window < watermark:
            shown = heapq.heappop(heap)[2]
            if shown.done:
                continue
            self._release(shown)
            self.counters.labelled += 1
            if shown.key is not None:
                tally = self.tallies[shown.key]
                tally.pending -= 1
                tally.shown.append(_labelled(shown))

    def _release(self, shown: _Shown) -> None:
        """No longer pending: out of its (user, product) list and the count."""
        shown.done = True
        item = (shown.user_id, shown.product_id)
        queue = self.by_item[item]
        queue.remove(shown)
        if not queue:
            del self.by_item[item]
        self.pending -= 1

    def _drop(self, shown: _Shown) -> None:
        """Forget ``shown`` wherever it is held."""
        if not shown.done:
            self._release(shown)
        if shown.orphan:
            shown.orphan = False
            waiting = self.orphans[shown.request_id]
            waiting.remove(shown)
            if not waiting:
                del self.orphans[shown.request_id]
            self.orphan_count -= 1

    # -- orphans ---------------------------------------------------------------

    def _add_orphan(self, shown: _Shown) -> None:
        shown.orphan = True
        self.orphan_count += 1
        heap = self._place_orphan(shown)
        if len(heap) > 2 * self.orphan_count + _COMPACT_SLACK:  # joined ones wait for their time
            self._orphan_heap = heap = [entry for entry in heap if entry[2].orphan]
            heapq.heapify(heap)
        while self.orphan_count > self.max_pending:
            self.counters.evicted_orphans += self._pop_orphan()

    def _place_orphan(self, shown: _Shown) -> list[tuple[float, int, _Shown]]:
        self.orphans.setdefault(shown.request_id, []).append(shown)
        self._seq += 1
        heapq.heappush(self._orphan_heap, (shown.ts, self._seq, shown))
        return self._orphan_heap

    def expire_orphans(self, before: float) -> None:
        """Drop orphans shown before ``before``: a request that old can no longer join."""
        heap = self._orphan_heap
        while heap and heap[0][0] < before:
            self.counters.unmatched += self._pop_orphan()

    def _pop_orphan(self) -> int:
        shown = heapq.heappop(self._orphan_heap)[2]
        if not shown.orphan:
            return 0  # joined its request, or dropped, meanwhile
        self._drop(shown)
        return 1

    # -- windows ---------------------------------------------------------------

    def ready(self, low_watermark: float) -> list[WindowKey]:
        """Windows whose outcomes are complete, oldest first per version.

        Complete: the prediction side closed, every partition's watermark is
        past the window's end plus :data:`SHOW_WINDOW_S` (so every impression
        of it has arrived), and none of its impressions awaits its label.
        A version's windows complete in order, so its concept-drift detector
        sees its labels in time order.
        """
        out: list[WindowKey] = []
        blocked: set[int] = set()
        for key in sorted(self.tallies, key=lambda k: (k[1], k[0])):
            tally = self.tallies[key]
            if key[0] in blocked:
                continue
            if (
                tally.closed
                and tally.pending == 0
                and low_watermark > tally.end + self.show_window_s
            ):
                out.append(key)
            else:
                blocked.add(key[0])
        return out

    def pop(self, key: WindowKey) -> OutcomeTally:
        """Remove window ``key`` and its requests; its impressions arriving later are unmatched."""
        tally = self.tallies.pop(key)
        for rid in tally.requests:
            entry = self.requests.get(rid)
            if entry is not None and entry[0] == key:
                del self.requests[rid]
        tally.shown.sort()
        return tally

    # -- snapshots: flat tuples; the indexes are rebuilt on restore, which costs less
    # than pickling every held impression through three of them --------------------

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in _INDEXES}
        held = [s for s in self._fifo if not s.done]
        held += [s for waiting in self.orphans.values() for s in waiting if s.done]
        state["newest"] = {part: partition.newest for part, partition in self.partitions.items()}
        state["held"] = [
            (s.part, s.ts, s.user_id, s.product_id, s.request_id,
             s.clicked, s.purchased, s.done, s.orphan, s.key, s.score)
            for s in held
        ]  # fmt: skip
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        newest: dict[str, float] = state.pop("newest")
        held: list[tuple[Any, ...]] = state.pop("held")
        self.__dict__.update(state)
        self.partitions = {part: _Partition() for part in newest}
        for part, time in newest.items():
            self.partitions[part].newest = time
        self.by_item, self._fifo = {}, deque()
        self.orphans, self._orphan_heap = {}, []
        for row in held:
            shown = _Shown(*row[:5])
            shown.clicked, shown.purchased, shown.done, shown.orphan, shown.key, shown.score = row[
                5:
            ]
            if not shown.done:
                self._place(self.partitions[shown.part], shown)
            if shown.orphan:
                self._place_orphan(shown)


_INDEXES: Final = frozenset({"partitions", "by_item", "_fifo", "orphans", "_orphan_heap"})


def _labelled(shown: _Shown) -> Labelled:
    return Labelled(
        shown.ts, shown.request_id, shown.product_id, shown.clicked, shown.purchased, shown.score
    )


def outcome_metrics(
    tally: OutcomeTally, detector: ConceptDriftDetector
) -> tuple[dict[str, float], int]:
    """The window's KPIs and realised performance; feeds its errors to ``detector``.

    Labels are purchases; ``impressions`` also counts the evicted ones, whose
    outcome is unknown, and every rate is over the ``labelled`` ones.
    """
    shown = tally.shown  # sorted by impression time by OutcomeJoin.pop
    labelled = len(shown)
    clicks = sum(item.clicked for item in shown)
    purchases = sum(item.purchased for item in shown)
    labels = np.fromiter((item.purchased for item in shown), dtype=np.float64, count=labelled)
    scores = np.fromiter((item.score for item in shown), dtype=np.float64, count=labelled)
    detections = detector.update_many(absolute_errors(labels, scores)) if labelled else 0
    metrics = {
        "impressions": float(labelled + tally.evicted),
        "clicks": float(clicks),
        "purchases": float(purchases),
        "ctr": clicks / labelled if labelled else math.nan,
        "conversion": purchases / labelled if labelled else math.nan,
        "roc_auc": stats.roc_auc(labels, scores),
        "log_loss": stats.log_loss(labels, scores),
        # what the scores of these same items promised: realised below expected on the
        # same items is the concept moving, whatever the population does
        "expected_roc_auc": stats.estimated_roc_auc(scores),
        "expected_conversion": float(scores.mean()) if labelled else math.nan,
        "labelled": float(labelled),
        "concept_drift": 1.0 if detections else 0.0,
    }
    return metrics, detections
