"""Replaying bronze events for the parity check, and telling feature lag from wrong values.

:class:`EventLog` holds the events once, sorted by event time (ties by Kafka
partition and offset, as the training-set builder does). A :class:`Replay` is
a cursor over it that folds events into per-entity
:class:`~flows.features.tiles.EntityTiles` up to a moment that only advances.

:class:`LagExplainer` keeps a second cursor ``allowance_s`` behind the first.
Serving read whatever the feature flow had processed by the request: every
event stamped more than ``allowance_s`` before it (assumed), plus, of the
events stamped in the last ``allowance_s`` (in flight), a prefix of each Kafka
partition (the flow reads a partition in offset order). An entity's logged
values are *explained by lag* when some such state gives them all. Lag only
ever leaves events out, so a value that counts events that never happened is
never explained: a corrupted store still shows.

Trying every combination of prefixes would be exponential in the partitions.
Every window is at least an hour of whole tiles up to the reading moment, so
events of the last ``allowance_s`` (at most :data:`MAX_ALLOWANCE_S`) are inside
every window: what a combination changes in the features is only how many
events of each type it adds, their spend, and the newest event time. Those
*contributions* are merged partition by partition, duplicates dropped, which
keeps the search to the distinct outcomes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection
from typing import Final, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from flows.features.definitions import MINUTE_S, PRODUCT_VIEW, USER_VIEW, FeatureValue
from flows.features.tiles import EntityTiles, TileSnapshot
from infra.plantly.catalog import Catalog
from monitoring.prediction_sample import LoggedPrediction
from training.contract import COLUMNS, Columns, assemble_rows

MAX_STATES: Final = 4096  # outcomes tried per entity; beyond, the difference stays unexplained
MAX_ALLOWANCE_S: Final = 300.0  # well inside the shortest window (1 hour)


class EventLog:
    """Bronze event columns as Python lists, in event-time order."""

    def __init__(self, events: pa.Table) -> None:
        keys = [("event_ts", "ascending")]
        if "source_partition" in events.column_names:
            keys += [("source_partition", "ascending"), ("source_offset", "ascending")]
        ordered = events.take(pc.sort_indices(events, keys))
        micros = pc.cast(ordered["event_ts"], pa.int64()).to_numpy(zero_copy_only=False)
        # the same float as datetime.timestamp(), which the stream uses: micros / 10**6
        self.ts: list[float] = (micros / 1e6).tolist()
        self.types: list[str] = ordered["event_type"].to_pylist()
        self.users: list[str] = ordered["user_id"].to_pylist()
        self.products: list[str] = ordered["product_id"].to_pylist()
        self.prices: list[float | None] = ordered["price"].to_pylist()
        self.quantities: list[int | None] = ordered["quantity"].to_pylist()
        columns = ordered.column_names
        count = len(self.ts)
        partitions = ordered["source_partition"] if "source_partition" in columns else None
        offsets = ordered["source_offset"] if "source_offset" in columns else None
        self.partitions: list[int] = [0] * count if partitions is None else partitions.to_pylist()
        self.offsets: list[int] = list(range(count)) if offsets is None else offsets.to_pylist()

    def __len__(self) -> int:
        return len(self.ts)

    def add_to(self, tiles: EntityTiles, at: int) -> None:
        tiles.add(self.types[at], self.ts[at], self.prices[at], self.quantities[at])


class Replay:
    """Tiles of ``users`` and ``products`` (all when None) from the events before a moment."""

    def __init__(
        self,
        log: EventLog,
        users: Collection[str] | None = None,
        products: Collection[str] | None = None,
    ) -> None:
        self.log = log
        self.wanted = (users, products)
        self.position = 0  # the events before it are counted
        self.users: dict[str, EntityTiles] = defaultdict(EntityTiles)
        self.products: dict[str, EntityTiles] = defaultdict(EntityTiles)
        # per product: where its newest counted event is, and its latest read (see _product)
        self._touched: dict[str, int] = {}
        self._reads: dict[str, tuple[int, int, dict[str, FeatureValue]]] = {}

    def advance(self, until: float) -> None:
        """Count every event stamped strictly before ``until`` ("as of" reads exclude ``until``)."""
        log, at = self.log, self.position
        ts, user_ids, product_ids = log.ts, log.users, log.products
        users, products, touched = self.users, self.products, self._touched
        wanted_users, wanted_products = self.wanted
        while at < len(ts) and ts[at] < until:
            user, product = user_ids[at], product_ids[at]
            if wanted_users is None or user in wanted_users:
                log.add_to(users[user], at)
            if wanted_products is None or product in wanted_products:
                log.add_to(products[product], at)
                touched[product] = at
            at += 1
        self.position = at

    def rows(self, record: LoggedPrediction, catalog: Catalog, as_of: float) -> Columns:
        """The record's rows as of ``as_of`` from the events counted so far."""
        # an entity without events reads as the view's defaults, as a missing Redis key does
        user = self.users.get(record.user_id)
        user_features = {} if user is None else user.features(USER_VIEW, as_of)
        products = [(pid, self._product(pid, as_of)) for pid in record.candidates]
        return assemble_rows(
            record.user_id, record.region, record.device, user_features, products, catalog, as_of
        )

    def newest_event(self, view: str, entity_id: str) -> float | None:
        """Event time of the entity's newest counted event."""
        tiles = (self.users if view == "user" else self.products).get(entity_id)
        return None if tiles is None else tiles.last_event_ts

    def _product(self, product_id: str, as_of: float) -> dict[str, FeatureValue]:
        tiles = self.products.get(product_id)
        if tiles is None:
            return {}
        # windows read as_of only by its minute (see flows.features.codec.FrozenCache), so a
        # product without new events reads the same all minute: most of the work, saved
        minute, touched = int(as_of) // MINUTE_S, self._touched[product_id]
        held = self._reads.get(product_id)
        if held is None or held[0] != minute or held[1] != touched:
            held = (minute, touched, tiles.features(PRODUCT_VIEW, as_of))
            self._reads[product_id] = held
        return held[2]


def entity_view(column: str) -> str | None:
    """The view whose entity a contract column describes; None for context and catalog ones.

    >>> entity_view("user_ctr_7d"), entity_view("product_ctr_24h"), entity_view("product_id")
    ('user', 'product', None)
    """
    if column.startswith("user_") and column != "user_id":
        return "user"
    if column.startswith("product_") and column != "product_id":
        return "product"
    return None


_VIEW_COLUMNS: Final = {
    view: [name for name in COLUMNS if entity_view(name) == view] for view in ("user", "product")
}
Same = Callable[[str, object, object], bool]


class LagExplainer:
    """Finds whether an entity's logged values are those of a lagging online state.

    ``same(column, logged, recomputed)`` is the comparison the check uses.
    """

    def __init__(self, exact: Replay, allowance_s: float, catalog: Catalog, same: Same) -> None:
        if not 0 < allowance_s <= MAX_ALLOWANCE_S:
            raise ValueError(f"a lag allowance must be in (0, {MAX_ALLOWANCE_S:.0f}] s")
        self.exact = exact
        self.allowance_s = allowance_s
        self.catalog = catalog
        self.same = same
        self.settled = Replay(exact.log, *exact.wanted)
        self._record: LoggedPrediction | None = None
        self._recent: dict[tuple[str, str], list[int]] = {}
        self._verdicts: dict[tuple[str, str], bool] = {}

    def explains(self, record: LoggedPrediction, view: str, row: int) -> bool:
        """True when a lagging state gives every ``view`` column of ``row`` its logged value.

        Call it for the record the exact replay was last advanced to.
        """
        if record is not self._record:
            self._start(record)
        entity = record.user_id if view == "user" else record.candidates[row]
        verdict = self._verdicts.get((view, entity))
        if verdict is None:
            verdict = self._verdicts[(view, entity)] = self._search(record, view, entity, row)
        return verdict

    def _start(self, record: LoggedPrediction) -> None:
        """Index the events in flight at ``record``: stamped in the allowance before it."""
        self._record = record
        self._verdicts = {}
        self.settled.advance(record.ts - self.allowance_s)
        log, recent = self.exact.log, defaultdict(list)
        for at in range(self.settled.position, self.exact.position):
            recent[("user", log.users[at])].append(at)
            recent[("product", log.products[at])].append(at)
        self._recent = recent

    def _search(self, record: LoggedPrediction, view: str, entity: str, row: int) -> bool:
        recent = self._recent.get((view, entity), [])
        if not recent:
            return False  # nothing was in flight: lag cannot explain a difference
        outcomes = _contributions(self.exact.log, recent)
        if outcomes is None:
            return False  # too many to try: left as a mismatch
        settled = (self.settled.users if view == "user" else self.settled.products).get(entity)
        logged = {name: record.features[name][row] for name in _VIEW_COLUMNS[view]}
        for outcome in outcomes:
            tiles = _copy(settled)
            outcome.add_to(tiles)
            if self._reads_as(record, view, entity, tiles, logged):
                return True
        return False

    def _reads_as(
        self,
        record: LoggedPrediction,
        view: str,
        entity: str,
        tiles: EntityTiles,
        logged: dict[str, object],
    ) -> bool:
        as_of = record.ts
        user: dict[str, FeatureValue] = {}
        products: list[tuple[str, dict[str, FeatureValue]]] = [(entity, {})]
        if view == "user":
            user, products = tiles.features(USER_VIEW, as_of), [(record.candidates[0], {})]
        else:
            products = [(entity, tiles.features(PRODUCT_VIEW, as_of))]
        rows = assemble_rows(
            record.user_id, record.region, record.device, user, products, self.catalog, as_of
        )
        return all(self.same(name, value, rows[name][0]) for name, value in logged.items())


def _copy(tiles: EntityTiles | None) -> EntityTiles:
    if tiles is None:
        return EntityTiles()
    snap = tiles.snapshot()
    return EntityTiles.from_snapshot(
        TileSnapshot(
            snap.last_event_ts,
            snap.newest,
            tuple(list(keys) for keys in snap.keys),
            tuple(list(values) for values in snap.values),
        )
    )


class _Contribution(NamedTuple):
    """What a set of in-flight events adds to an entity's windows."""

    counts: tuple[int, ...]  # per event type, in _TYPES order
    spend_cents: int
    newest: float

    def merge(self, other: _Contribution) -> _Contribution:
        counts = tuple(a + b for a, b in zip(self.counts, other.counts, strict=True))
        return _Contribution(
            counts, self.spend_cents + other.spend_cents, max(self.newest, other.newest)
        )

    def add_to(self, tiles: EntityTiles) -> None:
        """Events with the same effect on every window: all at the newest one's time."""
        for event_type, count in zip(_TYPES, self.counts, strict=True):
            for n in range(count):
                if event_type == "purchase":  # the whole spend on the first purchase
                    tiles.add(event_type, self.newest, self.spend_cents / 100 if n == 0 else 0.0, 1)
                else:
                    tiles.add(event_type, self.newest)


_TYPES: Final = ("impression", "click", "add_to_cart", "purchase")
_NOTHING: Final = _Contribution((0,) * len(_TYPES), 0, float("-inf"))


def _contributions(log: EventLog, recent: list[int]) -> set[_Contribution] | None:
    """The distinct contributions of every choice of a prefix per partition; None: too many."""
    by_partition: dict[int, list[int]] = defaultdict(list)
    for at in recent:
        by_partition[log.partitions[at]].append(at)
    reachable = {_NOTHING}
    for events in by_partition.values():
        prefixes, running = [_NOTHING], _NOTHING
        for at in sorted(events, key=lambda at: log.offsets[at]):
            running = running.merge(_single(log, at))
            prefixes.append(running)
        reachable = {done.merge(prefix) for done in reachable for prefix in prefixes}
        if len(reachable) > MAX_STATES:
            return None
    return reachable


def _single(log: EventLog, at: int) -> _Contribution:
    event_type = log.types[at]
    counts = tuple(int(event_type == name) for name in _TYPES)
    price, quantity = log.prices[at], log.quantities[at]
    cents = 0
    if event_type == "purchase" and price is not None and quantity is not None:
        cents = round(price * quantity * 100)  # as EntityTiles counts spend
    return _Contribution(counts, cents, log.ts[at])
