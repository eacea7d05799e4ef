"""The state of one entity: event counts in tiles over event time, combined at read time.

This is the one aggregation implementation behind the stream, the backfill and
the offline training sets: all three fold events into :class:`EntityTiles` and
read features from it, so online and offline values are equal by construction.
Serving reads the same windows with the same code (:class:`TileState`) from a
:class:`FrozenTiles` laid over the stored bytes, without converting them.

**Tiles.** An event at epoch second ``ts`` falls in tile ``idx = floor(ts / size)``
of each size: minute tiles (60 s) for the 1-hour windows, hour tiles (3600 s)
for the 24 h, 7 d and 30 d windows. Measures: impressions, clicks, add_to_cart,
purchases (one per purchase event) and spend (price * quantity of purchases,
rounded to integer cents per event so that sums are exact and do not depend on
the order of additions). Only impressions and clicks need minute tiles.

**Windows.** A window of N tiles read *as of t* is the sum of the tiles with index
in ``(idx(t) - N, idx(t)]``: the tile holding t is included, tiles after it are
ignored. 1 h = 60 minute tiles, 24 h = 24, 7 d = 168 and 30 d = 720 hour tiles,
so a window covers between N - 1 and N whole tiles before t. Windows decay at
read time, without new events: a 1 h count read two hours after the last event
is 0 while a 30 d count still holds it.

**"As of t" counts events strictly before t.** The current tile is included
whole, so this holds because of what the state *contains*: the offline builder
replays events in event-time order and reads as of t before it applies events
at or after t; the stream reads "now", after every event that has arrived.

**Retention.** Relative to the entity's newest event, the state keeps the tiles
with index above a floor: 721 hour tiles (30 days plus one hour tile) and 120
minute tiles (one hour plus one hour). That is what any read as of
t >= newest - 1 h needs (the stream accepts events up to 5 minutes in the
future, so "now" may trail the newest event). :meth:`add` ignores an event
whose hour tile is behind the floor (and skips only the minute tile when only
that one is); tiles and per-measure newest times behind the floors are never
read and are dropped before the state is exported. Both rules depend only on
the newest event, so the final state (and its encoding) does not depend on the
order in which events arrived.

**Ages.** Each feature's age is ``as_of`` minus the event time of the newest event
of the measure(s) it is built from (the newer part for ratios, the newest event
of any type for ``last_event_ts``), or None when there is none. It is negative
only when the state holds an event stamped after ``as_of``.

>>> t0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, an hour boundary
>>> tiles = EntityTiles()
>>> tiles.add("impression", t0 + 10)
>>> tiles.add("click", t0 + 20)
>>> tiles.add("purchase", t0 + 30, price=12.99, quantity=2)
>>> tiles.features("user", as_of=t0 + 60)
{'impressions_1h': 1, 'clicks_1h': 1, 'add_to_cart_24h': 0, 'purchases_30d': 1, \
'spend_30d': 25.98, 'ctr_7d': 1.0, 'last_event_ts': 1767225630.0}
>>> later = t0 + 2 * 3600  # no new events: the 1 h counts decay, 30 d ones stay
>>> values, ages = tiles.features("user", later), tiles.ages("user", later)
>>> values["impressions_1h"], values["spend_30d"], ages["impressions_1h"], ages["add_to_cart_24h"]
(0, 25.98, 7190.0, None)
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from typing import NamedTuple

from flows.features.definitions import (
    HOUR_S,
    MINUTE_S,
    FeatureValue,
    FeatureView,
    Measure,
    Window,
    WindowTotal,
    get_view,
)

HOUR_TILES_KEPT = 30 * 24 + 1
MINUTE_TILES_KEPT = 60 + 60

# Series 0..4 are the hour tiles of Measure 0..4; 5 and 6 the minute tiles of
# impressions and clicks. One flat list of series keeps add() free of lookups.
SERIES = 7
MINUTE_SERIES = {Measure.IMPRESSIONS: 5, Measure.CLICKS: 6}
HOUR_SERIES = range(5)
NEWEST_MEASURES = 4  # spend shares the purchases' newest time
_COMPACT_AT = 2 * HOUR_TILES_KEPT  # tiles in one series, retained or not
_NEVER = float("-inf")
_FAR_PAST = -(2**62)
_IMPRESSIONS, _CLICKS, _ADD_TO_CART, _PURCHASES, _SPEND = range(5)
_MINUTE_SERIES_OF = tuple(MINUTE_SERIES.get(measure, -1) for measure in Measure)

# event_type -> (measure, its minute series or 0 for none)
_PLANS = {
    "impression": (_IMPRESSIONS, 5),
    "click": (_CLICKS, 6),
    "add_to_cart": (_ADD_TO_CART, 0),
    "purchase": (_PURCHASES, 0),
}


class TileSnapshot(NamedTuple):
    """The raw state, for the codec: ``-inf`` stands for "never"; keys ascend."""

    last_event_ts: float
    newest: tuple[float, ...]
    keys: tuple[list[int], ...]
    values: tuple[list[int], ...]


class TileState:
    """The read side, shared by :class:`EntityTiles` and :class:`FrozenTiles`.

    Series ``s`` holds tile ``keys[s][i] + bases[s]`` with value ``values[s][i]``,
    keys ascending: plain lists with base 0 while counting, views over the encoded
    bytes (offsets above the retention floors) when only read.
    """

    __slots__ = ("_bases", "_hour_floor", "_keys", "_last", "_minute_floor", "_newest", "_values")

    _keys: tuple[Sequence[int], ...]
    _values: tuple[Sequence[int], ...]
    _bases: tuple[int, ...]
    _newest: Sequence[float]
    _last: float
    # tiles with an index <= floor are behind the retention: never read, dropped on export
    _hour_floor: int
    _minute_floor: int

    @property
    def last_event_ts(self) -> float | None:
        """Event time of the newest event of any type, None before the first."""
        return None if self._last == _NEVER else self._last

    def newest(self, measure: Measure) -> float | None:
        """Event time of the newest retained event of ``measure``."""
        ts = self._newest[_PURCHASES if measure == _SPEND else measure]
        # a newest time behind the floor may linger until compaction
        return None if ts == _NEVER or int(ts) // HOUR_S <= self._hour_floor else ts

    def window_total(self, measure: Measure, window: Window, as_of: float) -> int:
        """Sum of ``measure`` over the tiles with index in ``(idx(as_of) - N, idx(as_of)]``."""
        return self.window_totals(((measure, window),), as_of)[0]

    def window_totals(self, windows: Sequence[WindowTotal], as_of: float) -> list[int]:
        """:meth:`window_total` of each ``(measure, window)``, in one pass."""
        # the read path: one frame for a whole view, plain indexing, no helper calls
        whole = int(as_of)
        totals: list[int] = []
        for measure, window in windows:
            series: int
            if window.tile_s == HOUR_S:
                series, floor = measure, self._hour_floor
            else:
                series, floor = _MINUTE_SERIES_OF[measure], self._minute_floor
                if series < 0:
                    raise ValueError(f"no {window.tile_s} s tiles for {measure.name}")
            keys = self._keys[series]
            if not keys:
                totals.append(0)
                continue
            base = self._bases[series]
            high = whole // window.tile_s - base
            low = high - window.tiles
            if low < floor - base:  # tiles behind the floor may linger until compaction
                low = floor - base
            # keys ascend: the window is one contiguous slice
            end = len(keys) if keys[-1] <= high else bisect_right(keys, high)
            start = 0 if keys[0] > low else bisect_right(keys, low)
            totals.append(sum(self._values[series][start:end]))
        return totals

    def features(self, view: FeatureView | str, as_of: float) -> dict[str, FeatureValue]:
        """The view's features as of ``as_of`` (epoch seconds), in the view's order."""
        plan = (get_view(view) if isinstance(view, str) else view).plan
        totals = self.window_totals(plan.windows, as_of)
        last = self.last_event_ts
        return {name: f.combine(totals[a:b], last) for name, f, a, b in plan.slices}

    def ages(self, view: FeatureView | str, as_of: float) -> dict[str, float | None]:
        """Per feature, ``as_of`` minus the event time of its newest contribution."""
        spec = get_view(view) if isinstance(view, str) else view
        return {name: None if ts is None else as_of - ts for name, ts in self.age_sources(spec)}

    def age_sources(self, view: FeatureView) -> list[tuple[str, float | None]]:
        """Per feature of ``view``, the event time its age counts from (None: no such event)."""
        last = self.last_event_ts
        floor = self._hour_floor
        # newest time per Measure (spend follows purchases), -inf when none is retained;
        # plain loops: comprehensions cost a call each, and this runs per entity read
        newest = [_NEVER] * (NEWEST_MEASURES + 1)
        for measure, ts in enumerate(self._newest):
            if ts != _NEVER and int(ts) // HOUR_S > floor:
                newest[measure] = ts
        newest[_SPEND] = newest[_PURCHASES]
        sources: list[tuple[str, float | None]] = []
        for name, measures in view.plan.measures:
            if not measures:
                sources.append((name, last))
                continue
            ts = _NEVER
            for measure in measures:
                if newest[measure] > ts:
                    ts = newest[measure]
            sources.append((name, None if ts == _NEVER else ts))
        return sources

    def _canonical(self) -> tuple[object, ...]:
        pairs = zip(self._keys, self._bases, strict=True)
        keys = tuple(tuple(key + base for key in series) for series, base in pairs)
        return self._last, tuple(self._newest), keys, tuple(map(tuple, self._values))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TileState):
            return NotImplemented
        return self._canonical() == other._canonical()

    __hash__ = None  # type: ignore[assignment]  # EntityTiles is mutable

    def __repr__(self) -> str:
        tiles = sum(len(keys) for keys in self._keys)
        return f"{type(self).__name__}(last_event_ts={self.last_event_ts}, tiles={tiles})"


class EntityTiles(TileState):
    """Tiled event counts of one entity (a user or a product); see the module docstring."""

    __slots__ = ()

    _keys: tuple[list[int], ...]
    _values: tuple[list[int], ...]
    _newest: list[float]

    def __init__(self) -> None:
        self._keys = tuple([] for _ in range(SERIES))
        self._values = tuple([] for _ in range(SERIES))
        self._bases = (0,) * SERIES
        self._newest = [_NEVER] * NEWEST_MEASURES
        self._last = _NEVER
        self._hour_floor = _FAR_PAST
        self._minute_floor = _FAR_PAST

    # -- writing ------------------------------------------------------------

    def add(
        self, event_type: str, ts: float, price: float | None = None, quantity: int | None = None
    ) -> None:
        """Count one event at epoch seconds ``ts`` (≥ 0); runs once per event in the stream."""
        try:
            measure, minute_series = _PLANS[event_type]
        except KeyError:
            raise ValueError(f"unknown event_type {event_type!r}") from None
        # checked before anything changes, so a bad purchase leaves no half-counted trace
        cents = _cents(price, quantity) if measure == _PURCHASES else 0
        whole = int(ts)  # floor, for the non-negative times events carry
        hour = whole // HOUR_S
        minute = whole // MINUTE_S
        if ts > self._last:
            # tiles behind the floors are dropped lazily (see _compact)
            self._last = ts
            self._minute_floor = minute - MINUTE_TILES_KEPT
            self._hour_floor = hour - HOUR_TILES_KEPT
        elif hour <= self._hour_floor:
            return  # older than the retained 30 days: it could never be read
        keys = self._keys[measure]
        if keys and keys[-1] == hour:  # inlined _bump's usual case: add() is the hot path
            self._values[measure][-1] += 1
        else:
            _bump(keys, self._values[measure], hour, 1)
            if len(keys) > _COMPACT_AT:
                self._compact()
        if minute_series:
            if minute > self._minute_floor:
                keys = self._keys[minute_series]
                if keys and keys[-1] == minute:
                    self._values[minute_series][-1] += 1
                else:
                    _bump(keys, self._values[minute_series], minute, 1)
                    if len(keys) > _COMPACT_AT:
                        self._compact()
        elif measure == _PURCHASES:
            _bump(self._keys[_SPEND], self._values[_SPEND], hour, cents)
        if ts > self._newest[measure]:
            self._newest[measure] = ts

    def _compact(self) -> None:
        """Drop the tiles and newest times behind the retention floors.

        Done when a series grows past :data:`_COMPACT_AT` tiles and before the state
        is exported, not whenever the newest event moves: that happens on most events
        of a busy entity. Reads ignore what lies behind the floors anyway.
        """
        for series in HOUR_SERIES:
            _drop_through(self._keys[series], self._values[series], self._hour_floor)
        for series in MINUTE_SERIES.values():
            _drop_through(self._keys[series], self._values[series], self._minute_floor)
        newest = self._newest
        for measure in range(NEWEST_MEASURES):
            if newest[measure] != _NEVER and int(newest[measure]) // HOUR_S <= self._hour_floor:
                newest[measure] = _NEVER

    # -- raw state, for the codec -------------------------------------------

    def snapshot(self) -> TileSnapshot:
        """The state as plain values; the lists are the live ones, so do not modify them."""
        self._compact()
        return TileSnapshot(self._last, tuple(self._newest), self._keys, self._values)

    @classmethod
    def from_snapshot(cls, snapshot: TileSnapshot) -> EntityTiles:
        """Rebuild from :meth:`snapshot` (e.g. unpickled): its lists are taken over, not copied."""
        tiles = cls()
        tiles._last = snapshot.last_event_ts
        tiles._newest = list(snapshot.newest)
        tiles._keys = snapshot.keys
        tiles._values = snapshot.values
        tiles._hour_floor, tiles._minute_floor = retention_floors(snapshot.last_event_ts)
        return tiles

    def _canonical(self) -> tuple[object, ...]:
        self._compact()
        return super()._canonical()


class FrozenTiles(TileState):
    """A read-only state over encoded bytes, for reads: nothing is copied or converted.

    ``keys`` are the codec's offsets above the retention floors (which follow from
    ``last_event_ts``); :meth:`thaw` gives an :class:`EntityTiles` to keep counting.
    """

    __slots__ = ()

    def __init__(
        self,
        last_event_ts: float,
        newest: Sequence[float],
        keys: tuple[Sequence[int], ...],
        values: tuple[Sequence[int], ...],
    ) -> None:
        self._last = last_event_ts
        self._newest = newest
        self._keys = keys
        self._values = values
        hour, minute = self._hour_floor, self._minute_floor = retention_floors(last_event_ts)
        self._bases = (hour, hour, hour, hour, hour, minute, minute)  # the SERIES layout

    def thaw(self) -> EntityTiles:
        """A mutable copy with absolute tile indexes."""
        tiles = EntityTiles()
        tiles._last = self._last
        tiles._newest = list(self._newest)
        tiles._hour_floor, tiles._minute_floor = self._hour_floor, self._minute_floor
        pairs = zip(self._keys, self._bases, strict=True)
        tiles._keys = tuple([key + base for key in keys] for keys, base in pairs)
        tiles._values = tuple(list(values) for values in self._values)
        return tiles


def retention_floors(last_event_ts: float) -> tuple[int, int]:
    """The hour and minute tile indexes at and behind which nothing is kept."""
    if last_event_ts == _NEVER:
        return _FAR_PAST, _FAR_PAST
    whole = int(last_event_ts)
    return whole // HOUR_S - HOUR_TILES_KEPT, whole // MINUTE_S - MINUTE_TILES_KEPT


def _bump(keys: list[int], values: list[int], index: int, amount: int) -> None:
    """Add ``amount`` to tile ``index``, keeping ``keys`` ascending."""
    if keys and keys[-1] == index:  # the usual case: the same tile as the last event
        values[-1] += amount
    elif not keys or keys[-1] < index:
        keys.append(index)
        values.append(amount)
    else:  # a late event
        at = bisect_left(keys, index)
        if keys[at] == index:
            values[at] += amount
        else:
            keys.insert(at, index)
            values.insert(at, amount)


def _drop_through(keys: list[int], values: list[int], floor: int) -> None:
    """Drop the tiles with index <= floor."""
    if keys and keys[0] <= floor:
        cut = bisect_right(keys, floor)
        del keys[:cut]
        del values[:cut]


def _cents(price: float | None, quantity: int | None) -> int:
    if price is None or quantity is None:
        raise ValueError("a purchase needs price and quantity")
    return round(price * quantity * 100)
