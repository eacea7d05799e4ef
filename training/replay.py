"""The point-in-time replay behind training sets, and the reference requests sampled from it.

:class:`Replay` holds every user's and product's
:class:`~flows.features.tiles.EntityTiles` while events are fed in event-time
order; :func:`training.dataset.build_rows` reads a training row's features
from it as of each impression. :class:`ReferenceRequests` rides the same
replay to collect what serving would have scored as sampled sessions started:
the population a model's reference profile (:mod:`training.profiles`)
describes, because it is what the monitor bins.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from flows.features.definitions import PRODUCT_VIEW, USER_VIEW, FeatureValue
from flows.features.tiles import EntityTiles
from infra.errors import InvalidInputError
from infra.plantly.catalog import Catalog
from infra.plantly.compliance import allowed_candidates
from training.contract import Columns, assemble_rows, empty_columns

REQUEST = "request"
REQUEST_COLUMNS = (REQUEST, "event_ts", "event_id", "session_id")
"""What reference rows carry besides the contract columns (see :class:`ReferenceRequests`)."""
REFERENCE_REQUESTS = 600
"""Reference requests a training run samples: ~300,000 rows with the whole catalog.

A request's user and context columns are one sample each, so the count sets the
reference's own noise: against ~3,000 later steady requests the region's JS
distance read 0.121 with 300 reference requests and 0.087 with 1,000 (threshold
0.2); 600 costs ~2 s of a training run."""


class Replay:
    """Every user's and product's tiles, fed the events in event-time order.

    Events of one instant are counted only when the next instant is fed, so a
    read between gives the features "as of t": strictly before t.
    """

    def __init__(self) -> None:
        self.users: dict[str, EntityTiles] = defaultdict(EntityTiles)
        self.products: dict[str, EntityTiles] = defaultdict(EntityTiles)
        self._pending: list[tuple[str, float, str, str, float | None, int | None]] = []
        self._current = float("-inf")

    def feed(self, row: dict[str, Any]) -> float:
        """Take one event (counted later, see above); its event time in epoch seconds."""
        ts: float = row["event_ts"].timestamp()
        if ts != self._current:
            self._count()
            self._current = ts
        self._pending.append(
            (row["event_type"], ts, row["user_id"], row["product_id"], row["price"],
             row["quantity"])
        )  # fmt: skip
        return ts

    def user(self, user_id: str, ts: float) -> dict[str, FeatureValue]:
        tiles = self.users.get(user_id)
        # an entity never seen reads as the view's defaults, as the online store serves it
        return tiles.features(USER_VIEW, ts) if tiles is not None else {}

    def product(self, product_id: str, ts: float) -> dict[str, FeatureValue]:
        tiles = self.products.get(product_id)
        return tiles.features(PRODUCT_VIEW, ts) if tiles is not None else {}

    def _count(self) -> None:
        users, products = self.users, self.products
        for event_type, ts, user_id, product_id, price, quantity in self._pending:
            users[user_id].add(event_type, ts, price, quantity)
            products[product_id].add(event_type, ts, price, quantity)
        self._pending.clear()


@dataclass
class ReferenceRequests:
    """Serving-shaped reference requests, sampled during :func:`~training.dataset.build_rows`.

    Serving is asked for recommendations as a session starts and scores every
    catalog product allowed in the shopper's region; the monitor bins exactly
    those rows. Impressions are another population — the products the shop
    chose to show, read mid-session — so a reference made of them shows drift
    on steady traffic. These rows are the serving kind: at the first impression
    of a sampled session, the user's features as of that moment (strictly
    before it, like a training row), the event's region and device, and one row
    per product :func:`~infra.plantly.compliance.allowed_candidates` keeps,
    with its features as of that moment.

    Sessions are sampled among those whose first impression falls in the
    latest ``validation_fraction`` of the range's impressions (from
    :attr:`sample_from`, the first instant :func:`~training.dataset.time_split` puts in
    validation), the ``max_requests`` with the smallest hash of their id: a
    reproducible, uniform sample spread over the part, whatever the order of
    the events.
    """

    validation_fraction: float = 0.2
    max_requests: int = REFERENCE_REQUESTS
    sample_from: float | None = None  # set by choose(); None: too few impressions
    sessions: int = 0  # sessions starting from sample_from, sampled or not
    _columns: Columns = field(default_factory=empty_columns, init=False, repr=False)
    _extra: dict[str, list[object]] = field(
        default_factory=lambda: {name: [] for name in REQUEST_COLUMNS}, init=False, repr=False
    )
    _allowed: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False)
    _session_ids: list[str] = field(default_factory=list, init=False, repr=False)
    _read: dict[str, tuple[int, float | None, dict[str, FeatureValue]]] = field(
        default_factory=dict, init=False, repr=False
    )

    def __post_init__(self) -> None:
        if not 0 < self.validation_fraction < 1:
            raise InvalidInputError("validation_fraction must be between 0 and 1")
        if self.max_requests < 0:
            raise InvalidInputError("max_requests cannot be negative")

    @property
    def frame(self) -> pd.DataFrame:
        """Contract columns plus ``request`` (0, 1, … in time order), ``event_ts``,
        ``event_id`` (the session's first impression) and ``session_id``."""
        frame = pd.DataFrame({**self._columns, **self._extra})
        frame[REQUEST] = frame[REQUEST].astype("int64")
        frame["event_ts"] = frame["event_ts"].astype("float64")
        return frame

    def choose(
        self, ordered: pa.Table, start: float, end: float, horizon: float, catalog: Catalog
    ) -> dict[str, int]:
        """The sampled sessions' first impressions: event id to request number."""
        self.sample_from = _validation_start(
            ordered, start, end, horizon, catalog, self.validation_fraction
        )
        if self.sample_from is None or self.max_requests <= 0:
            return {}
        starts = _session_starts(ordered, end)
        starts = starts[starts["event_ts"] >= self.sample_from]
        self.sessions = len(starts)
        sessions: list[str] = starts["session_id"].tolist()
        order = {session: (_session_hash(session), session) for session in sessions}
        ranked = sorted(range(len(sessions)), key=lambda i: order[sessions[i]])
        chosen = sorted(ranked[: self.max_requests])  # back in event-time order
        event_ids: list[str] = starts["event_id"].tolist()
        self._session_ids = [sessions[i] for i in chosen]
        return {event_ids[i]: number for number, i in enumerate(chosen)}

    def collect(
        self, request: int, row: dict[str, Any], ts: float, replay: Replay, catalog: Catalog
    ) -> None:
        """Add the rows serving would score for the session starting with impression ``row``."""
        region, user_id = row["region"], row["user_id"]
        allowed = self._allowed.get(region)
        if allowed is None:
            allowed = self._allowed[region] = allowed_candidates(catalog, region, catalog)
        products = [(product_id, self._product(replay, product_id, ts)) for product_id in allowed]
        rows = assemble_rows(
            user_id, region, row["device"], replay.user(user_id, ts), products, catalog, ts
        )
        for name, values in rows.items():
            self._columns[name].extend(values)
        extra, n = self._extra, len(allowed)
        extra[REQUEST].extend([request] * n)
        extra["event_ts"].extend([ts] * n)
        extra["event_id"].extend([row["event_id"]] * n)
        extra["session_id"].extend([self._session_ids[request]] * n)

    def _product(self, replay: Replay, product_id: str, ts: float) -> dict[str, FeatureValue]:
        """A product's features as of ``ts``, reusing the last read when it cannot differ.

        Product features depend on the read time only through its minute (hour
        tiles are whole minutes). During the replay, an event counted after a
        read is at or after that read's time, so after the product's newest
        event: an unchanged newest event means an unchanged state.
        """
        tiles = replay.products.get(product_id)
        if tiles is None:
            return {}
        minute, newest = int(ts) // 60, tiles.last_event_ts
        last = self._read.get(product_id)
        if last is not None and last[0] == minute and last[1] == newest:
            return last[2]
        features = tiles.features(PRODUCT_VIEW, ts)
        self._read[product_id] = (minute, newest, features)
        return features


def _validation_start(
    ordered: pa.Table, start: float, end: float, horizon: float, catalog: Catalog, fraction: float
) -> float | None:
    """The first instant :func:`~training.dataset.time_split` validates, from the events alone.

    The impressions that become rows (in range, label known, product in the
    catalog) are already in event-time order: the cut is the same index.
    """
    times = _seconds(ordered["event_ts"])
    impression = pc.equal(ordered["event_type"], "impression")
    known = pc.is_in(ordered["product_id"], value_set=pa.array(list(catalog)))
    rows = (
        _mask(pc.and_(impression, known))
        & (times >= start) & (times < end) & (times <= horizon)
    )  # fmt: skip
    kept = times[rows]
    if kept.size < 2:
        return None
    return float(kept[int(kept.size * (1 - fraction))])


def _session_starts(ordered: pa.Table, end: float) -> pd.DataFrame:
    """Each session's first impression before ``end``: its event id, session id, time."""
    if "session_id" not in ordered.column_names:
        return pd.DataFrame({"event_id": [], "session_id": [], "event_ts": []})
    impressions = ordered.filter(
        pc.and_(
            pc.equal(ordered["event_type"], "impression"),
            pc.is_valid(ordered["session_id"]),
        )
    )
    frame = pd.DataFrame({
        "event_id": impressions["event_id"].to_numpy(zero_copy_only=False),
        "session_id": impressions["session_id"].to_numpy(zero_copy_only=False),
        "event_ts": _seconds(impressions["event_ts"]),
    })  # fmt: skip
    frame = frame[frame["event_ts"] < end]
    return frame.drop_duplicates("session_id", keep="first").reset_index(drop=True)


def _mask(condition: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(condition.to_numpy(zero_copy_only=False), dtype=bool)


def _session_hash(session_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(session_id.encode(), digest_size=8).digest(), "big")


def _seconds(column: pa.ChunkedArray) -> np.ndarray:
    """Epoch seconds of a timestamp[us] column, equal to ``datetime.timestamp()`` of each."""
    micros = pc.cast(pc.cast(column, pa.timestamp("us", tz="UTC")), pa.int64())
    return np.asarray(micros.to_numpy(), dtype=np.int64) / 1e6
