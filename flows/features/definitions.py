"""Feature set version 1: the ``user`` and ``product`` views, and what each feature means.

A view names its entity key, its features in a fixed order, their dtypes and the
defaults served for an entity the online store has never seen (counts 0, ratios
0.0, ``last_event_ts`` None). Each feature declares the window totals it is
computed from; :class:`flows.features.tiles.TileState` reads them, so the
stream, the backfill and the offline training sets share this one definition.

>>> view = get_view("user")
>>> view.entity, view.names
('user_id', ('impressions_1h', 'clicks_1h', 'add_to_cart_24h', 'purchases_30d', 'spend_30d', \
'ctr_7d', 'last_event_ts'))
>>> view.defaults()["ctr_7d"], view.defaults()["last_event_ts"], view.dtypes["purchases_30d"]
(0.0, None, 'int64')
>>> get_view("product").names
('impressions_1h', 'clicks_1h', 'purchases_24h', 'ctr_24h', 'conversion_24h')
>>> get_view("basket")
Traceback (most recent call last):
...
infra.errors.NotFoundError: unknown feature view 'basket'; known views: product, user
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from functools import cached_property
from typing import Literal, Protocol

from infra.errors import NotFoundError

FEATURE_SET_VERSION = 1

FeatureValue = float | int | None
Dtype = Literal["int64", "float64"]

MINUTE_S = 60
HOUR_S = 3600


class Measure(IntEnum):
    """What the tiles count. ``SPEND`` is kept in integer cents (see ``tiles``)."""

    IMPRESSIONS = 0
    CLICKS = 1
    ADD_TO_CART = 2
    PURCHASES = 3
    SPEND = 4


@dataclass(frozen=True, slots=True)
class Window:
    """``tiles`` tiles of ``tile_s`` seconds, the tile holding ``as_of`` included."""

    name: str
    tile_s: int
    tiles: int


HOUR_WINDOW = Window("1h", MINUTE_S, 60)
DAY_WINDOW = Window("24h", HOUR_S, 24)
WEEK_WINDOW = Window("7d", HOUR_S, 7 * 24)
MONTH_WINDOW = Window("30d", HOUR_S, 30 * 24)


WindowTotal = tuple[Measure, Window]


class Feature(Protocol):
    """One named value of a view, computed from window totals of an entity's tiles.

    Features declare what they read instead of reading it themselves, so that
    :meth:`TileState.features <flows.features.tiles.TileState.features>` computes
    every total of a view in one pass: reads serve 100 entities in a millisecond.
    """

    @property
    def name(self) -> str: ...

    @property
    def dtype(self) -> Dtype: ...

    @property
    def default(self) -> FeatureValue: ...

    @property
    def windows(self) -> tuple[WindowTotal, ...]:
        """The window totals the value is computed from, in the order ``combine`` takes."""
        ...

    @property
    def measures(self) -> tuple[Measure, ...]:
        """The measures whose newest event gives the age; () for any event."""
        ...

    def combine(self, totals: Sequence[int], last_event_ts: float | None) -> FeatureValue:
        """The value, from the totals of :attr:`windows` as of the read."""
        ...


@dataclass(frozen=True, slots=True)
class Count:
    """How many events of one measure fall in the window."""

    name: str
    measure: Measure
    window: Window
    dtype: Dtype = "int64"
    default: FeatureValue = 0

    @property
    def windows(self) -> tuple[WindowTotal, ...]:
        return ((self.measure, self.window),)

    @property
    def measures(self) -> tuple[Measure, ...]:
        return (self.measure,)

    def combine(self, totals: Sequence[int], last_event_ts: float | None) -> FeatureValue:
        return totals[0]


@dataclass(frozen=True, slots=True)
class Money(Count):
    """A money total over the window; tiles keep cents, so the sum is exact."""

    dtype: Dtype = "float64"
    default: FeatureValue = 0.0

    def combine(self, totals: Sequence[int], last_event_ts: float | None) -> FeatureValue:
        return totals[0] / 100


@dataclass(frozen=True, slots=True)
class Ratio:
    """``numerator / max(denominator, 1)`` over one window: 0.0 with no denominator."""

    name: str
    numerator: Measure
    denominator: Measure
    window: Window
    dtype: Dtype = "float64"
    default: FeatureValue = 0.0

    @property
    def windows(self) -> tuple[WindowTotal, ...]:
        return ((self.numerator, self.window), (self.denominator, self.window))

    @property
    def measures(self) -> tuple[Measure, ...]:
        return (self.numerator, self.denominator)  # as fresh as the newer part

    def combine(self, totals: Sequence[int], last_event_ts: float | None) -> FeatureValue:
        return totals[0] / max(totals[1], 1)


@dataclass(frozen=True, slots=True)
class LastEventTs:
    """Event time (epoch seconds) of the entity's newest event, of any type."""

    name: str = "last_event_ts"
    dtype: Dtype = "float64"
    default: FeatureValue = None
    windows: tuple[WindowTotal, ...] = ()
    measures: tuple[Measure, ...] = ()

    def combine(self, totals: Sequence[int], last_event_ts: float | None) -> FeatureValue:
        return last_event_ts


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """A view's features flattened for one-pass reads (see :meth:`FeatureView.plan`)."""

    windows: tuple[WindowTotal, ...]
    # per feature: name, feature, and its slice of the totals of ``windows``
    slices: tuple[tuple[str, Feature, int, int], ...]
    measures: tuple[tuple[str, tuple[Measure, ...]], ...]


@dataclass(frozen=True)
class FeatureView:
    """The features of one entity type, in the order models and tables use."""

    name: str
    entity: str
    features: tuple[Feature, ...]
    version: int = FEATURE_SET_VERSION
    # Keep decoded states between reads (online.FrozenCache): pays for entities that
    # many requests read, such as products; for shoppers, each read once per state,
    # the cache's evictions only add latency.
    cache_reads: bool = False

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    @property
    def dtypes(self) -> dict[str, Dtype]:
        return {f.name: f.dtype for f in self.features}

    @cached_property
    def plan(self) -> ReadPlan:
        """Every window total the view reads, in feature order, built on first use."""
        windows: list[WindowTotal] = []
        slices: list[tuple[str, Feature, int, int]] = []
        for feature in self.features:
            slices.append(
                (feature.name, feature, len(windows), len(windows) + len(feature.windows))
            )
            windows.extend(feature.windows)
        measures = tuple((f.name, f.measures) for f in self.features)
        return ReadPlan(tuple(windows), tuple(slices), measures)

    def defaults(self) -> dict[str, FeatureValue]:
        """What an entity without any (retained) event reads as; a fresh dict each call."""
        return {f.name: f.default for f in self.features}


M = Measure

USER_VIEW = FeatureView(
    name="user",
    entity="user_id",
    features=(
        Count("impressions_1h", M.IMPRESSIONS, HOUR_WINDOW),
        Count("clicks_1h", M.CLICKS, HOUR_WINDOW),
        Count("add_to_cart_24h", M.ADD_TO_CART, DAY_WINDOW),
        Count("purchases_30d", M.PURCHASES, MONTH_WINDOW),
        Money("spend_30d", M.SPEND, MONTH_WINDOW),
        Ratio("ctr_7d", M.CLICKS, M.IMPRESSIONS, WEEK_WINDOW),
        LastEventTs(),
    ),
)

PRODUCT_VIEW = FeatureView(
    name="product",
    entity="product_id",
    features=(
        Count("impressions_1h", M.IMPRESSIONS, HOUR_WINDOW),
        Count("clicks_1h", M.CLICKS, HOUR_WINDOW),
        Count("purchases_24h", M.PURCHASES, DAY_WINDOW),
        Ratio("ctr_24h", M.CLICKS, M.IMPRESSIONS, DAY_WINDOW),
        Ratio("conversion_24h", M.PURCHASES, M.IMPRESSIONS, DAY_WINDOW),
    ),
    cache_reads=True,
)

VIEWS: dict[str, FeatureView] = {view.name: view for view in (USER_VIEW, PRODUCT_VIEW)}


def get_view(name: str) -> FeatureView:
    """The view called ``name``; :class:`~infra.errors.NotFoundError` (404) otherwise."""
    try:
        return VIEWS[name]
    except KeyError:
        known = ", ".join(sorted(VIEWS))
        raise NotFoundError(f"unknown feature view {name!r}; known views: {known}") from None
