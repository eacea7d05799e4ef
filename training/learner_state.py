"""The incremental learner's state: features, pending impressions, labels, the model.

:class:`LearnerState` consumes shop events in the order a Kafka partition holds
them and learns from each impression once its label is known. It needs no
Bytewax: the dataflow (:mod:`training.learner_flow`) feeds it batches, the
benchmark feeds it lists.

**Features.** The user and product tiles are :class:`~flows.features.tiles.EntityTiles`,
the code of the feature pipeline and of the offline training sets. An impression's
row (:func:`training.contract.append_row`) is read *as of its event time* before
the impression is counted; like the offline builder, events of one instant in a
partition are counted only once a later instant arrives, so a row never sees
its own impression nor a sibling stamped with the same time.

**Labels.** An impression is positive when the same user buys the same product
within 30 minutes after it (event time, both ends included), negative once the
partition's *watermark* passes impression time + 30 minutes. The watermark is
the newest event time seen in the partition minus :data:`ALLOWED_LATENESS_S`.
It is kept per partition because a user's events all live in one partition, in
order, while partitions are read in turns of up to 5,000 messages: a global
watermark would jump ahead by hours during a replay and call every impression
of the other partitions negative. Labels therefore depend only on each
partition's order, never on how partitions interleave.

The lateness is one hour, not minutes, because the bundled simulator emits a
whole shopping session at once in history mode: within a partition, event time
then runs up to ~95 minutes ahead of the next session. With 5 minutes, 15% of the
positives of a 2-day simulated history were called negative; with one hour,
1 in 1,338 (measured). A producer that sends events as they happen can use
minutes. A purchase arriving more than the lateness behind its partition's
newest event may find its impression already labeled negative.

**Bounded state.** A pending impression lives at most 30 minutes + the lateness of
its partition's event time (it is labeled, or dropped, then). A user holds at
most :data:`MAX_PENDING_PER_USER` pending impressions: past the cap the oldest is
dropped *unlabeled* and counted in ``evicted`` — never guessed negative — so a
shopper (or a bot) seeing hundreds of plants in 90 minutes cannot grow the state.
A partition that goes quiet keeps its pending impressions until its next event.

**Prequential.** Each labeled example is first scored by the current model, the
score updates the log loss and the ROC AUC, and only then does the model learn
from it (test-then-train). The AUC is River's ``RollingROCAUC`` over the last
:data:`AUC_WINDOW` examples: exact in that window and 0.3 µs per update, whereas
``ROCAUC`` places 10 thresholds evenly over [0, 1], so with a 3% base rate nearly
every score falls under the first one and it read 0.54 where the exact AUC was
0.73 (50 thresholds: 0.70, at 24 µs per update — a quarter of the budget).

**Position.** ``positions`` holds, per ``{partition}-{topic}``, the next offset to
read; a :meth:`snapshot` taken between batches is the state after exactly the
messages before those offsets.

>>> state = LearnerState()
>>> t = 1_767_225_600.0
>>> pid = next(iter(state.catalog))
>>> def event(n, kind, ts):
...     return LearnerEvent(f"e{n}", kind, ts, "u-1", pid, "US-CA", "mobile", 9.99, 1)
>>> state.learn_batch("0-shop.events", [event(1, "impression", t), event(2, "purchase", t + 60)])
>>> state.counters.labeled, state.counters.positives, state.positions
(1, 1, {'0-shop.events': 2})
"""

from __future__ import annotations

import heapq
import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Final, NamedTuple

from river import metrics

from flows.features.definitions import PRODUCT_VIEW, USER_VIEW
from flows.features.tiles import EntityTiles, TileSnapshot
from infra.plantly.catalog import Catalog, load_catalog
from training.contract import COLUMNS, empty_columns
from training.contract import append_row as append_contract_row
from training.river_model import OnlineClassifier, make_pipeline

LABEL_WINDOW_S: Final = 30 * 60
ALLOWED_LATENESS_S: Final = 60 * 60
MAX_PENDING_PER_USER: Final = 64
AUC_WINDOW: Final = 10_000
SNAPSHOT_FORMAT: Final = 1


class Prequential:
    """River's log loss and rolling ROC AUC of test-then-train scores."""

    def __init__(self, auc_window: int) -> None:
        self.log_loss = metrics.LogLoss()  # type: ignore[no-untyped-call]
        self.roc_auc = metrics.RollingROCAUC(window_size=auc_window)  # type: ignore[no-untyped-call]

    def update(self, label: bool, probability: float) -> None:
        self.log_loss.update(label, probability)
        self.roc_auc.update(label, probability)  # type: ignore[no-untyped-call]

    def values(self) -> dict[str, float]:
        return {
            "log_loss": float(self.log_loss.get()),  # type: ignore[no-untyped-call]
            "roc_auc": float(self.roc_auc.get()),  # type: ignore[no-untyped-call]
        }


class LearnerEvent(NamedTuple):
    """The fields of a valid shop event the learner reads; ``ts`` in epoch seconds."""

    event_id: str
    event_type: str
    ts: float
    user_id: str
    product_id: str
    region: str
    device: str
    price: float | None = None
    quantity: int | None = None

    @classmethod
    def from_mapping(cls, row: Mapping[str, Any]) -> LearnerEvent:
        """From a bronze-like row; ``event_ts`` may be epoch seconds or a datetime."""
        ts = row["event_ts"]
        return cls(
            row["event_id"], row["event_type"],
            ts.timestamp() if isinstance(ts, datetime) else float(ts),
            row["user_id"], row["product_id"], row["region"], row["device"],
            row.get("price"), row.get("quantity"),
        )  # fmt: skip


@dataclass
class LearnerCounters:
    """Running totals since the learner's first event (they survive restores)."""

    events: int = 0
    impressions: int = 0
    labeled: int = 0
    positives: int = 0
    evicted: int = 0  # pending impressions dropped at the per-user cap
    skipped: int = 0  # events of a product the catalog does not know

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Pending:
    """An impression waiting for its label, with its contract row as of its time."""

    __slots__ = ("done", "product_id", "ts", "user_id", "values")

    def __init__(self, ts: float, user_id: str, product_id: str, values: tuple[Any, ...]) -> None:
        self.ts, self.user_id, self.product_id, self.values = ts, user_id, product_id, values
        self.done = False  # labeled or evicted; lazily removed from the expiry heap

    def __getstate__(self) -> tuple[Any, ...]:
        return self.ts, self.user_id, self.product_id, self.values, self.done

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.ts, self.user_id, self.product_id, self.values, self.done = state


class _Partition:
    """Per-partition event time: the watermark, expiry order, and the current instant."""

    __slots__ = ("expiry", "instant", "newest", "uncounted")

    def __init__(self) -> None:
        self.newest = float("-inf")
        self.expiry: list[tuple[float, int, _Pending]] = []  # (impression ts, seq, pending)
        self.instant = float("nan")  # event time of the events not yet counted
        self.uncounted: list[LearnerEvent] = []

    def __getstate__(self) -> tuple[Any, ...]:
        return self.newest, self.expiry, self.instant, self.uncounted

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.newest, self.expiry, self.instant, self.uncounted = state


class LearnerState:
    """Features, pending impressions, prequential metrics and the model; see the module doc."""

    def __init__(
        self,
        model: OnlineClassifier | None = None,
        *,
        label_window_s: float = LABEL_WINDOW_S,
        allowed_lateness_s: float = ALLOWED_LATENESS_S,
        max_pending_per_user: int = MAX_PENDING_PER_USER,
        auc_window: int = AUC_WINDOW,
        catalog: Catalog | None = None,
    ) -> None:
        self.model: OnlineClassifier = model if model is not None else make_pipeline()
        self.label_window_s = label_window_s
        self.allowed_lateness_s = allowed_lateness_s
        self.max_pending_per_user = max_pending_per_user
        self.auc_window = auc_window
        self.catalog = catalog if catalog is not None else load_catalog()
        self.prequential = Prequential(auc_window)
        self.counters = LearnerCounters()
        self.positions: dict[str, int] = {}
        self.users: dict[str, EntityTiles] = {}
        self.products: dict[str, EntityTiles] = {}
        self.pending: dict[str, list[_Pending]] = {}  # by user, oldest first
        self.partitions: dict[str, _Partition] = {}
        self._seq = 0
        self._products = self.catalog.product_ids
        self._row = empty_columns()  # one row at a time, popped into a tuple

    # -- consuming -------------------------------------------------------------

    def learn_batch(
        self, part: str, events: Iterable[LearnerEvent], next_offset: int | None = None
    ) -> None:
        """Consume a partition's events in order; ``next_offset`` defaults to one per event."""
        partition = self.partitions.get(part)
        if partition is None:
            partition = self.partitions[part] = _Partition()
        count = 0
        for event in events:
            self._consume(partition, event)
            count += 1
        self.counters.events += count
        self.positions[part] = (
            next_offset if next_offset is not None else self.positions.get(part, 0) + count
        )

    def _consume(self, partition: _Partition, event: LearnerEvent) -> None:
        ts = event.ts
        if ts > partition.newest:
            partition.newest = ts
            self._expire(partition, ts - self.allowed_lateness_s)
        if ts != partition.instant:
            self._count(partition.uncounted)
            partition.instant = ts
        if event.product_id not in self._products:
            self.counters.skipped += 1
            return
        kind = event.event_type
        if kind == "impression":
            self.counters.impressions += 1
            self._impression(partition, event)
        elif kind == "purchase":
            self._purchase(event)
        partition.uncounted.append(event)

    def _count(self, events: list[LearnerEvent]) -> None:
        users, products = self.users, self.products
        for e in events:
            tiles = users.get(e.user_id)
            if tiles is None:
                tiles = users[e.user_id] = EntityTiles()
            tiles.add(e.event_type, e.ts, e.price, e.quantity)
            tiles = products.get(e.product_id)
            if tiles is None:
                tiles = products[e.product_id] = EntityTiles()
            tiles.add(e.event_type, e.ts, e.price, e.quantity)
        events.clear()

    def _impression(self, partition: _Partition, event: LearnerEvent) -> None:
        values = self._row_values(event)
        pending = _Pending(event.ts, event.user_id, event.product_id, values)
        if event.ts + self.label_window_s < partition.newest - self.allowed_lateness_s:
            self._label(pending, False)  # arrived after its window closed
            return
        queue = self.pending.get(event.user_id)
        if queue is None:
            queue = self.pending[event.user_id] = []
        if len(queue) >= self.max_pending_per_user:
            oldest = queue.pop(0)
            oldest.done = True
            self.counters.evicted += 1
        queue.append(pending)
        self._seq += 1
        heapq.heappush(partition.expiry, (event.ts, self._seq, pending))

    def _row_values(self, event: LearnerEvent) -> tuple[Any, ...]:
        ts = event.ts
        user = self.users.get(event.user_id)
        product = self.products.get(event.product_id)
        append_contract_row(
            self._row, event.user_id, event.product_id, event.region, event.device,
            user.features(USER_VIEW, ts) if user is not None else {},
            product.features(PRODUCT_VIEW, ts) if product is not None else {},
            self.catalog, ts,
        )  # fmt: skip
        return tuple(map(list.pop, self._row.values()))

    def _purchase(self, event: LearnerEvent) -> None:
        queue = self.pending.get(event.user_id)
        if not queue:
            return
        window, ts, product_id = self.label_window_s, event.ts, event.product_id
        matched = [p for p in queue if p.product_id == product_id and p.ts <= ts <= p.ts + window]
        if not matched:
            return
        self._forget(queue, event.user_id, matched)
        for pending in matched:
            self._label(pending, True)

    def _expire(self, partition: _Partition, watermark: float) -> None:
        heap, window = partition.expiry, self.label_window_s
        while heap and heap[0][0] + window < watermark:
            pending = heapq.heappop(heap)[2]
            if pending.done:
                continue
            queue = self.pending[pending.user_id]
            self._forget(queue, pending.user_id, [pending])
            self._label(pending, False)

    def _forget(self, queue: list[_Pending], user_id: str, gone: Sequence[_Pending]) -> None:
        for pending in gone:
            queue.remove(pending)
            pending.done = True
        if not queue:
            del self.pending[user_id]

    def _label(self, pending: _Pending, label: bool) -> None:
        """Test, then train: score with the current model, update metrics, learn."""
        x = dict(zip(COLUMNS, pending.values, strict=True))
        probability = self.model.predict_proba_one(x).get(True, 0.0)
        self.prequential.update(label, probability)
        self.model.learn_one(x, label)
        self.counters.labeled += 1
        self.counters.positives += label

    # -- reading ---------------------------------------------------------------

    @property
    def pending_count(self) -> int:
        return sum(len(queue) for queue in self.pending.values())

    def watermark(self, part: str) -> float:
        """Impressions of ``part`` before ``watermark - 30 min`` are labeled."""
        partition = self.partitions.get(part)
        newest = float("-inf") if partition is None else partition.newest
        return newest - self.allowed_lateness_s

    def metric_values(self) -> dict[str, float]:
        """Prequential log loss and rolling ROC AUC (NaN before the first label)."""
        if not self.counters.labeled:
            return {"log_loss": float("nan"), "roc_auc": float("nan")}
        return self.prequential.values()

    # -- snapshots -------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole state as bytes: a consistent copy, taken between batches."""
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def restore(cls, data: bytes, catalog: Catalog | None = None) -> LearnerState:
        """The state of :meth:`snapshot`; the catalog is the bundled one unless given."""
        state = pickle.loads(data)  # our own checkpoint artifact
        if not isinstance(state, cls):
            raise TypeError(f"not a {cls.__name__} snapshot: {type(state).__name__}")
        if catalog is not None:
            state.catalog, state._products = catalog, catalog.product_ids
        return state

    def __getstate__(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in _NOT_SAVED}
        state["users"] = {k: t.snapshot() for k, t in self.users.items()}
        state["products"] = {k: t.snapshot() for k, t in self.products.items()}
        state["format"] = SNAPSHOT_FORMAT
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        saved_format = state.pop("format", None)
        if saved_format != SNAPSHOT_FORMAT:
            raise ValueError(f"learner snapshot format {saved_format}, expected {SNAPSHOT_FORMAT}")
        users: dict[str, TileSnapshot] = state.pop("users")
        products: dict[str, TileSnapshot] = state.pop("products")
        self.__dict__.update(state)
        self.users = {k: EntityTiles.from_snapshot(s) for k, s in users.items()}
        self.products = {k: EntityTiles.from_snapshot(s) for k, s in products.items()}
        self.catalog = load_catalog()
        self._products = self.catalog.product_ids
        self._row = empty_columns()


_NOT_SAVED: Final = frozenset({"catalog", "_products", "_row", "users", "products"})
