"""Features at request time: the user and every candidate in one Redis round trip.

:func:`fetch` reads both views with one ``MGET``
(:func:`flows.features.online.read_views_async`), decoded by the same code as
the stream and ``tributary features get``. Entities the store has never seen
read as their view's defaults: an unknown shopper is not an error.

Ages are reported per feature: the user's own, and for products the largest
age over the candidates (the stalest value the model saw).

>>> from flows.features.online import FeatureRow
>>> rows = [FeatureRow("product", p, True, {}, {"clicks_1h": a}, 0.0) for p, a in
...         (("a", 5.0), ("b", None), ("c", 40.0))]
>>> stalest(rows)
{'clicks_1h': 40.0}
>>> stalest([FeatureRow("product", "d", False, {}, {"clicks_1h": None}, 0.0)])
{'clicks_1h': None}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis as AsyncRedis

from flows.features.definitions import FeatureValue
from flows.features.online import FeatureRow, read_views_async
from infra.settings import Settings
from serving.schemas import Ages, FeatureAges


@dataclass(frozen=True, slots=True)
class RequestFeatures:
    """One request's features, as of ``as_of`` (epoch seconds)."""

    user: FeatureRow
    products: list[FeatureRow]
    as_of: float

    def product_values(self) -> dict[str, dict[str, FeatureValue]]:
        return {row.entity_id: row.features for row in self.products}

    def ages(self) -> FeatureAges:
        return FeatureAges(user=self.user.ages, product=stalest(self.products))


async def fetch(
    client: AsyncRedis, settings: Settings, user_id: str, product_ids: Sequence[str], as_of: float
) -> RequestFeatures:
    """The user's and the products' features in one MGET."""
    users, products = await read_views_async(
        client, settings, [("user", [user_id]), ("product", product_ids)], as_of
    )
    return RequestFeatures(users[0], products, as_of)


def stalest(rows: Sequence[FeatureRow]) -> Ages:
    """Per feature, the largest age among ``rows``; None where no row has one."""
    out: Ages = {}
    for row in rows:
        for name, age in row.ages.items():
            if age is None:
                out.setdefault(name, None)
                continue
            held = out.get(name)
            if held is None or age > held:
                out[name] = age
    return out


def largest_age(ages: Ages) -> float | None:
    """The stalest feature of a set of ages (for the age histogram).

    >>> largest_age({"a": 3.0, "b": None, "c": 7.5}), largest_age({"a": None})
    (7.5, None)
    """
    known = [age for age in ages.values() if age is not None]
    return max(known) if known else None
