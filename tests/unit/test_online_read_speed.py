"""The fast online read path: decoded states kept per process must read exactly like fresh ones.

Redis is replaced by a dict answering MGET (the wire is covered by
``tests/integration/test_online_store.py``); what is under test is what happens
to the values after it: the shared :class:`~flows.features.codec.FrozenCache`
and the totals it keeps per minute. Nothing here is timed: see
``python -m tests.benchmarks.features read-path``.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from flows.features.codec import encode
from flows.features.online import (
    FeatureRow,
    feature_key,
    read_features,
    read_features_async,
    read_views,
)
from flows.features.tiles import EntityTiles
from infra.settings import Settings

T0 = 1_767_225_600.0
KINDS = ("impression", "impression", "impression", "click", "add_to_cart", "purchase")
SETTINGS = Settings(profile="readtest")


class DictRedis:
    """MGET over a dict, handing out a new bytes object per answer as Redis does."""

    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return [None if key not in self.values else bytes(self.values[key]) for key in keys]


class AsyncDictRedis(DictRedis):
    async def mget(self, keys: Sequence[str]) -> list[bytes | None]:  # type: ignore[override]
        return super().mget(keys)


def busy_entity(seed: int) -> EntityTiles:
    rng = random.Random(seed)
    tiles = EntityTiles()
    for _ in range(rng.randint(1, 600)):
        ts = T0 + rng.uniform(0, 3 * 86400.0)
        tiles.add(rng.choice(KINDS), ts, rng.uniform(1, 90), rng.randint(1, 3))
    return tiles


def store(states: dict[tuple[str, str], EntityTiles]) -> dict[str, bytes]:
    return {feature_key(SETTINGS, view, eid): encode(t) for (view, eid), t in states.items()}


def expected_row(tiles: EntityTiles | None, view: str, eid: str, as_of: float) -> FeatureRow:
    if tiles is None:
        return read_features(cast(Redis, DictRedis({})), SETTINGS, view, [eid], as_of)[0]
    features, ages = tiles.features(view, as_of), tiles.ages(view, as_of)
    return FeatureRow(view, eid, True, features, ages, as_of)


def test_repeated_reads_equal_the_counting_states() -> None:
    users = {("user", f"u-{i}"): busy_entity(i) for i in range(5)}
    products = {("product", f"p-{i}"): busy_entity(100 + i) for i in range(20)}
    client = cast(Redis, DictRedis(store(users | products)))
    user_ids = [eid for _, eid in users] + ["u-missing"]
    product_ids = [eid for _, eid in products] + ["p-missing"]
    as_of = T0 + 3 * 86400.0
    for step in (0.0, 0.5, 30.0, 45.0, 3600.0, -120.0, 0.25):  # same minute, next ones, back
        as_of += step
        got_users, got_products = read_views(
            client, SETTINGS, [("user", user_ids), ("product", product_ids)], as_of
        )
        assert got_users == [
            expected_row(users.get(("user", eid)), "user", eid, as_of) for eid in user_ids
        ]
        assert got_products == [
            expected_row(products.get(("product", eid)), "product", eid, as_of)
            for eid in product_ids
        ]


def test_a_new_state_under_the_same_key_is_read_at_once() -> None:
    tiles = busy_entity(7)
    values = store({("product", "p-1"): tiles})
    client = cast(Redis, DictRedis(values))
    as_of = T0 + 3 * 86400.0
    before = read_features(client, SETTINGS, "product", ["p-1"], as_of)[0]
    tiles.add("impression", as_of - 1)  # the stream writes the next state
    values.update(store({("product", "p-1"): tiles}))
    after = read_features(client, SETTINGS, "product", ["p-1"], as_of)[0]
    assert after.features["impressions_1h"] == cast(int, before.features["impressions_1h"]) + 1
    assert after == expected_row(tiles, "product", "p-1", as_of)


def test_rows_own_their_dicts() -> None:
    client = cast(Redis, DictRedis(store({("user", "u-1"): busy_entity(3)})))
    for _ in range(2):  # the value is kept from its second read on
        first = read_features(client, SETTINGS, "user", ["u-1"], T0 + 86400.0)[0]
        first.features.clear()
        first.ages["ctr_7d"] = -1.0
    again = read_features(client, SETTINGS, "user", ["u-1"], T0 + 86400.0)[0]
    assert len(again.features) == 7 and again.ages["ctr_7d"] != -1.0


def test_async_and_threaded_reads_agree() -> None:
    states = {("product", f"p-{i}"): busy_entity(200 + i) for i in range(30)}
    values = store(states)
    ids = [eid for _, eid in states]
    as_of = T0 + 2 * 86400.0 + 17.0
    expected = [expected_row(states[("product", eid)], "product", eid, as_of) for eid in ids]
    client = cast(AsyncRedis, AsyncDictRedis(values))
    rows = asyncio.run(read_features_async(client, SETTINGS, "product", ids, as_of))
    assert rows == expected

    def read(offset: int) -> list[FeatureRow]:
        order = ids[offset:] + ids[:offset]
        rows = read_features(cast(Redis, DictRedis(values)), SETTINGS, "product", order, as_of)
        return sorted(rows, key=lambda row: ids.index(row.entity_id))

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert all(rows == expected for rows in pool.map(read, range(30)))
