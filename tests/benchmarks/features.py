"""Online features: ``EntityTiles.add`` per event, and ``read_features`` latency on Redis.

Two weeks of simulated plantly.shop traffic are folded into 10,000 users and the
540 products; their states are written to Redis, then batches of 100 entities
are read (the serving path reads one user and up to 100 candidate products).
:func:`bench_read_path` times what a prediction request does after its MGET
(decode, window totals and ages of one user and 50 products), Redis left out.

Run alone against a temporary stack, or the read path alone without one::

    python -m tests.benchmarks.features
    python -m tests.benchmarks.features read-path
"""

from __future__ import annotations

import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, cast

from redis import Redis

from flows.features import online
from flows.features.codec import encode
from flows.features.online import (
    delete_view,
    feature_key,
    read_features,
    read_views,
    write_entities,
)
from flows.features.tiles import EntityTiles
from infra.plantly.simulator import ShopSimulator, SimulationConfig
from infra.settings import Settings

TARGET_READ_P99_MS = 2.0
TARGET_ADD_US = 2.0
TARGET_READ_PATH_P50_MS = 0.4
CANDIDATES = 50
USERS = 10_000
ANCHOR = datetime(2026, 5, 1, tzinfo=UTC)

Event = tuple[str, str, str, float, float | None, int | None]


def simulated_events(events: int = 400_000, seed: int = 1) -> list[Event]:
    """(user_id, product_id, event_type, ts, price, quantity) over 14 days, in order."""
    config = SimulationConfig(
        events=events, seed=seed, history_days=14, users=13_000, anchor=ANCHOR
    )
    out: list[Event] = []
    for message in ShopSimulator(config).messages():
        if message.topic != "events":
            continue
        e = json.loads(message.value)
        ts = datetime.fromisoformat(e["event_ts"]).timestamp()
        out.append(
            (e["user_id"], e["product_id"], e["event_type"], ts, e["price"], e.get("quantity"))
        )
    return out


def fold(events: list[Event]) -> tuple[dict[str, EntityTiles], dict[str, EntityTiles], float]:
    """The first USERS users' and every product's state; returns µs per ``add``."""
    users: dict[str, EntityTiles] = {}
    for user_id, *_ in events:
        if len(users) == USERS:
            break
        users.setdefault(user_id, EntityTiles())
    products = {product_id: EntityTiles() for _, product_id, *_ in events}
    mine = [e for e in events if e[0] in users]
    started = time.perf_counter()
    for user_id, product_id, event_type, ts, price, quantity in mine:
        users[user_id].add(event_type, ts, price, quantity)
        products[product_id].add(event_type, ts, price, quantity)
    elapsed = time.perf_counter() - started
    return users, products, elapsed / (2 * len(mine)) * 1e6


def latencies_ms(read: Callable[[list[str]], object], batches: list[list[str]]) -> dict[str, float]:
    """p50 and p99 of ``read(batch)`` over the batches (after 20 warm-up reads)."""
    for batch in batches[:20]:  # warm the connection and the struct caches
        read(batch)
    samples = []
    for batch in batches:
        started = time.perf_counter()
        read(batch)
        samples.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(samples, n=100)
    return {"p50_ms": round(cuts[49], 3), "p99_ms": round(cuts[98], 3)}


def memory_per_key(client: Redis, keys: list[str]) -> float:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.memory_usage(key, samples=0)
    sizes: list[int] = pipe.execute()
    return sum(sizes) / len(sizes)


def bench_feature_reads(settings: Settings, reads: int = 1000) -> dict[str, Any]:
    """Write 10k users and 540 products, then time reads of 100 entities."""
    events = simulated_events()
    event_count = len(events)
    users, products, add_us = fold(events)
    client = Redis.from_url(settings.redis_url)
    try:
        for view in ("user", "product"):
            delete_view(client, settings, view)
        items = [("user", uid, t) for uid, t in users.items()]
        items += [("product", pid, t) for pid, t in products.items()]
        started = time.perf_counter()
        for at in range(0, len(items), 1000):
            write_entities(client, settings, items[at : at + 1000])
        write_s = time.perf_counter() - started
        written = len(items)
        rng = random.Random(1)
        user_ids, product_ids = list(users), list(products)
        as_of = ANCHOR.timestamp()
        sample = rng.sample(user_ids, 1000)
        value_bytes = statistics.mean(len(encode(users[u])) for u in sample)
        stored = (
            {uid: encode(tiles) for uid, tiles in users.items()},
            {pid: encode(tiles) for pid, tiles in products.items()},
        )
        # A serving process holds none of the simulation: drop it, so that the
        # garbage collector's full passes over it do not land in the timings.
        del events, users, products, items
        gc.collect()
        gc.freeze()

        def read(view: str) -> Callable[[list[str]], object]:
            return lambda ids: read_features(client, settings, view, ids, as_of)

        user_batches = [rng.sample(user_ids, 100) for _ in range(reads)]
        product_batches = [rng.sample(product_ids, 100) for _ in range(reads)]
        user_reads = latencies_ms(read("user"), user_batches)
        product_reads = latencies_ms(read("product"), product_batches)
        user_keys = [feature_key(settings, "user", uid) for uid in sample]
        result = {
            "events": event_count,
            "users": len(user_ids),
            "products": len(product_ids),
            "add_us_per_event": round(add_us, 3),
            "add_events_per_s": round(1e6 / add_us),
            "target_add_us": TARGET_ADD_US,
            "write_entities_per_s": round(written / write_s),
            "read_100_users": user_reads,
            "read_100_products": product_reads,
            "target_read_p99_ms": TARGET_READ_P99_MS,
            "meets_target": user_reads["p99_ms"] <= TARGET_READ_P99_MS,
            "product_reads_meet_target": product_reads["p99_ms"] <= TARGET_READ_P99_MS,
            "redis_bytes_per_user": round(memory_per_key(client, user_keys)),
            "value_bytes_per_user": round(value_bytes),
            "read_path_1_user_50_products": bench_read_path(*stored, as_of),
        }
        for view in ("user", "product"):
            delete_view(client, settings, view)
        return result
    finally:
        gc.unfreeze()
        client.close()


class _Prepared:
    """A stand-in for Redis whose MGET answers with the values prepared for the read."""

    def __init__(self) -> None:
        self.values: list[bytes | None] = []

    def mget(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.values


def bench_read_path(
    users: dict[str, bytes], products: dict[str, bytes], as_of: float, reads: int = 2000
) -> dict[str, Any]:
    """``read_views`` of 1 user + 50 products after the MGET, in three cases.

    Every read gets fresh ``bytes`` objects, as from Redis (whose hash is not yet
    computed). ``cold``: the process's decoded states are dropped before each read,
    so every entity is decoded and computed. ``new_minute``: states kept, each read
    a minute after the last, so every window total is computed again (what the
    first request of each minute pays). ``steady``: reads 10 ms apart (100
    requests/s), users drawn from all of them, so most users miss and most
    products hit.
    """
    settings = Settings()
    client = _Prepared()
    rng = random.Random(2)
    user_ids, product_ids = list(users), list(products)
    requests = [(rng.choice(user_ids), rng.sample(product_ids, CANDIDATES)) for _ in range(reads)]

    def timed(step_s: float, cold: bool) -> dict[str, float]:
        online._STATES.clear()  # each case starts from an empty process
        samples = []
        for n, (user_id, candidates) in enumerate(requests):
            # copies made untimed: Redis hands over new objects on every reply
            client.values = [bytes(bytearray(users[user_id]))]
            client.values += [bytes(bytearray(products[pid])) for pid in candidates]
            if cold:
                online._STATES.clear()
            wanted = [("user", [user_id]), ("product", candidates)]
            started = time.perf_counter()
            read_views(cast(Redis, client), settings, wanted, as_of + n * step_s)
            samples.append((time.perf_counter() - started) * 1000)
        cuts = statistics.quantiles(samples[len(samples) // 10 :], n=100)  # after warm-up
        return {"p50_ms": round(cuts[49], 3), "p99_ms": round(cuts[98], 3)}

    steady = timed(0.01, cold=False)
    return {
        "cold": timed(0.0, cold=True),
        "new_minute": timed(60.0, cold=False),
        "steady": steady,
        "target_p50_ms": TARGET_READ_PATH_P50_MS,
        "meets_target": steady["p50_ms"] <= TARGET_READ_PATH_P50_MS,
    }


def bench_read_path_alone() -> dict[str, Any]:
    """:func:`bench_read_path` on the simulated states, without Redis or a stack."""
    users, products, _ = fold(simulated_events())
    encoded_users = {uid: encode(tiles) for uid, tiles in users.items()}
    encoded_products = {pid: encode(tiles) for pid, tiles in products.items()}
    del users, products
    gc.collect()
    return bench_read_path(encoded_users, encoded_products, ANCHOR.timestamp())


if __name__ == "__main__":
    if sys.argv[1:] == ["read-path"]:
        print(json.dumps(bench_read_path_alone(), indent=2))
        raise SystemExit(0)
    from tests.benchmarks.stack import benchmark_stack

    with benchmark_stack() as bench_settings:
        print(json.dumps(bench_feature_reads(bench_settings), indent=2))
