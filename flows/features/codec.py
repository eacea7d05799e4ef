"""A compact, versioned binary encoding of :class:`~flows.features.tiles.EntityTiles`.

One Redis value per entity. Little-endian, struct-packed::

    B    codec version (CODEC_VERSION)
    d    last_event_ts, -inf before the first event
    4d   newest event time of impressions, clicks, add_to_cart, purchases (-inf: none)
    7H   number of tiles in each series (hour tiles of the 5 measures, then the
         minute tiles of impressions and clicks)
    nH   every tile's index as an offset above the retention floor of its size
         (1..721 hours, 1..120 minutes), series by series, ascending
    mI   the counts of the six count series, in the same order
    kQ   spend per hour tile, in integer cents

An entity takes 55 bytes plus 6 per count tile and 10 per spend tile. Tiles come
out of :meth:`EntityTiles.snapshot` already pruned, so equal states encode to
equal bytes. Reads convert nothing: :func:`decode_frozen` reads the windows
straight from views over the bytes, with the same code as counting uses, and
:class:`FrozenCache` keeps the hot states of a serving process decoded. Bump
:data:`CODEC_VERSION` whenever the layout or the meaning of a tile changes;
:func:`decode` refuses any other version, and a backfill rebuilds the online
store.

>>> from flows.features.tiles import EntityTiles
>>> tiles = EntityTiles()
>>> tiles.add("impression", 1_767_225_610.0)
>>> tiles.add("purchase", 1_767_225_630.5, price=9.99, quantity=3)
>>> data = encode(tiles)
>>> len(data), decode(data) == tiles, decode(data).features("user", 1_767_225_700.0)["spend_30d"]
(83, True, 29.97)
>>> decode(b"\\x07" + data[1:])
Traceback (most recent call last):
...
flows.features.codec.FeatureCodecError: online feature value has codec version 7, this code \
reads version 1: rebuild the online store (backfill)
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from functools import lru_cache

from flows.features.definitions import MINUTE_S, FeatureValue, FeatureView
from flows.features.tiles import (
    MINUTE_SERIES,
    NEWEST_MEASURES,
    SERIES,
    EntityTiles,
    FrozenTiles,
    retention_floors,
)
from infra.errors import TributaryError

CODEC_VERSION = 1

_HEADER = struct.Struct(f"<Bd{NEWEST_MEASURES}d{SERIES}H")
_SPEND_SERIES = 4
_COUNT_SERIES = tuple(s for s in range(SERIES) if s != _SPEND_SERIES)
_IS_MINUTE = tuple(s in MINUTE_SERIES.values() for s in range(SERIES))
# memoryview.cast reads native order; the layout is little-endian
_ZERO_COPY = sys.byteorder == "little"


class FeatureCodecError(TributaryError):
    """A stored feature value this code cannot read (another version, or damaged)."""

    code = "feature_codec_error"
    http_status = 500


def encode(tiles: EntityTiles) -> bytes:
    """The bytes of one entity's state; equal states give equal bytes."""
    snap = tiles.snapshot()
    hour_floor, minute_floor = retention_floors(snap.last_event_ts)
    offsets: list[int] = []
    for series, keys in enumerate(snap.keys):
        floor = minute_floor if _IS_MINUTE[series] else hour_floor
        offsets.extend(key - floor for key in keys)
    counts = [value for series in _COUNT_SERIES for value in snap.values[series]]
    spend = snap.values[_SPEND_SERIES]
    return b"".join(
        (
            _HEADER.pack(
                CODEC_VERSION,
                snap.last_event_ts,
                *snap.newest,
                *(len(keys) for keys in snap.keys),
            ),
            _array("H", len(offsets)).pack(*offsets),
            _array("I", len(counts)).pack(*counts),
            _array("Q", len(spend)).pack(*spend),
        )
    )


def decode(data: bytes) -> EntityTiles:
    """Rebuild the state :func:`encode` wrote, to keep counting; see :func:`decode_frozen`."""
    return decode_frozen(data).thaw()


def decode_frozen(data: bytes) -> FrozenTiles:
    """A read-only state over ``data`` itself: the fast path for serving reads."""
    if not data or data[0] != CODEC_VERSION:
        found = data[0] if data else "none"
        raise FeatureCodecError(
            f"online feature value has codec version {found}, this code reads version "
            f"{CODEC_VERSION}: rebuild the online store (backfill)"
        )
    try:
        return _decode(data)
    except (struct.error, IndexError, ValueError) as error:
        raise FeatureCodecError(f"damaged online feature value ({len(data)} bytes)") from error


class FrozenCache:
    """Decoded states and their latest features, per entity, checked against the stored bytes.

    Serving reads the same hot products request after request. A kept state
    answers a read only when the bytes just read equal the bytes it was decoded
    from: comparing them costs about 50 ns per KB, hashing them (to look them
    up) ten times that, and decoding far more. Other bytes are decoded and
    replace the entity's state. A state also keeps its latest window totals per
    view: every window sums whole minute or hour tiles up to the one holding
    ``as_of``, so they change only when ``as_of`` enters another minute.
    :meth:`read` keeps an entity from its second read on; at most ``maxsize``
    entities are kept, the one kept longest first out; damaged values are not
    kept. Safe to share between threads: each step is one dict operation, and
    a race costs at most a second decode.

    >>> from flows.features.definitions import get_view
    >>> from flows.features.tiles import EntityTiles
    >>> tiles = EntityTiles()
    >>> tiles.add("click", 1_767_225_610.0)
    >>> cache, product = FrozenCache(maxsize=2), get_view("product")
    >>> features, ages = cache.read(product, "p-1", encode(tiles), 1_767_225_700.0)
    >>> features["clicks_1h"], ages["clicks_1h"], len(cache)
    (1, 90.0, 0)
    >>> cache.read(product, "p-1", encode(tiles), 1_767_225_700.0) == (features, ages), len(cache)
    (True, 1)
    """

    def __init__(self, maxsize: int = 4096) -> None:
        self.maxsize = maxsize
        self._kept: dict[tuple[str, str], _CachedState] = {}
        self._seen: set[tuple[str, str]] = set()  # entities read once, cleared when full

    def read(
        self, view: FeatureView, entity_id: str, data: bytes, as_of: float
    ) -> tuple[dict[str, FeatureValue], dict[str, float | None]]:
        """``(features, ages)`` of ``entity_id``'s state ``data`` as of ``as_of``: fresh dicts."""
        key = (view.name, entity_id)
        state = self._kept.get(key)
        if state is not None and state.data == data:
            return state.read(view, as_of)
        if state is None and key not in self._seen:
            # kept from its second read on: most shoppers are read once, and keeping
            # (then evicting) a state costs more than decoding it
            if len(self._seen) >= 4 * self.maxsize:
                self._seen.clear()
            self._seen.add(key)
            tiles = decode_frozen(data)
            return tiles.features(view, as_of), tiles.ages(view, as_of)
        fresh = _CachedState(data)
        if state is None and len(self._kept) >= self.maxsize:
            oldest = next(iter(self._kept), None)  # None if another thread emptied it
            if oldest is not None:
                self._kept.pop(oldest, None)
        self._kept[key] = fresh
        return fresh.read(view, as_of)

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        self._kept.clear()
        self._seen.clear()


class _CachedState:
    """One decoded state and, per view name, its latest read (see :class:`FrozenCache`)."""

    __slots__ = ("data", "reads", "tiles")

    def __init__(self, data: bytes) -> None:
        self.tiles = decode_frozen(data)
        self.data = data
        self.reads: dict[str, _Read] = {}

    def read(
        self, view: FeatureView, as_of: float
    ) -> tuple[dict[str, FeatureValue], dict[str, float | None]]:
        # window_totals reads as_of only as int(as_of) // tile_s, for minute and hour
        # tiles: the minute fixes the hour too, so equal minutes give equal totals
        minute = int(as_of) // MINUTE_S
        held = self.reads.get(view.name)
        if held is None or held[0] is not view:
            held = (view, minute, self.tiles.features(view, as_of), self.tiles.age_sources(view))
            self.reads[view.name] = held
        elif held[1] != minute:
            held = (view, minute, self.tiles.features(view, as_of), held[3])
            self.reads[view.name] = held
        ages = {name: None if ts is None else as_of - ts for name, ts in held[3]}
        return dict(held[2]), ages  # copies: the caller may change its own


# a view, the minute of the read, its features, and the event times its ages count from
_Read = tuple[FeatureView, int, dict[str, FeatureValue], list[tuple[str, float | None]]]


def _decode(data: bytes) -> FrozenTiles:
    header = _HEADER.unpack_from(data)
    sizes = header[2 + NEWEST_MEASURES :]
    total = sum(sizes)
    spend_count = sizes[_SPEND_SERIES]
    counts_at = _HEADER.size + 2 * total
    spend_at = counts_at + 4 * (total - spend_count)
    if spend_at + 8 * spend_count != len(data):
        raise ValueError("length does not match the tile counts")
    offsets, counts, spend = _arrays(data, total, counts_at, spend_at)
    keys: list[Sequence[int]] = []
    values: list[Sequence[int]] = []
    at = counted = 0
    for series, size in enumerate(sizes):
        if not size:  # many series are empty: skip making views of nothing
            keys.append(())
            values.append(())
            continue
        keys.append(offsets[at : at + size])
        at += size
        if series == _SPEND_SERIES:
            values.append(spend)
        else:
            values.append(counts[counted : counted + size])
            counted += size
    return FrozenTiles(header[1], header[2 : 2 + NEWEST_MEASURES], tuple(keys), tuple(values))


def _arrays(
    data: bytes, total: int, counts_at: int, spend_at: int
) -> tuple[Sequence[int], Sequence[int], Sequence[int]]:
    """The offsets, counts and spend arrays: views over ``data`` where the host allows."""
    if _ZERO_COPY:
        view = memoryview(data)
        return (
            view[_HEADER.size : counts_at].cast("H"),
            view[counts_at:spend_at].cast("I"),
            view[spend_at:].cast("Q"),
        )
    spend_count = (len(data) - spend_at) // 8
    return (
        _array("H", total).unpack_from(data, _HEADER.size),
        _array("I", total - spend_count).unpack_from(data, counts_at),
        _array("Q", spend_count).unpack_from(data, spend_at),
    )


@lru_cache(maxsize=1024)
def _array(code: str, count: int) -> struct.Struct:
    # one compiled Struct per length, instead of formatting and parsing it per call
    return struct.Struct(f"<{count}{code}")
