"""EntityTiles: window boundaries, decay, ratios, ages, retention and order independence.

Times are offsets from T0, an hour (and minute) boundary, so the tile of each
event can be read off: minute tile M0 + s // 60, hour tile H0 + s // 3600.
"""

from __future__ import annotations

import random

import pytest

from flows.features.codec import encode
from flows.features.definitions import DAY_WINDOW, Measure
from flows.features.tiles import EntityTiles

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
MIN = 60.0
HOUR = 3600.0
DAY = 86400.0


def tiles_of(*events: tuple[str, float]) -> EntityTiles:
    tiles = EntityTiles()
    for event_type, offset in events:
        price, quantity = (10.0, 1) if event_type == "purchase" else (None, None)
        tiles.add(event_type, T0 + offset, price, quantity)
    return tiles


def user(tiles: EntityTiles, offset: float) -> dict[str, float | int | None]:
    return tiles.features("user", T0 + offset)


def test_minute_window_includes_the_oldest_tile_and_not_the_one_before() -> None:
    # as of T0+1h30s the tile is M0+60: the window is minutes M0+1 .. M0+60
    tiles = tiles_of(("impression", 59.9), ("impression", 60.0), ("click", 60.0))
    assert user(tiles, HOUR + 30)["impressions_1h"] == 1
    assert user(tiles, HOUR + 30)["clicks_1h"] == 1
    # one minute earlier both impressions are in
    assert user(tiles, HOUR - 1)["impressions_1h"] == 2
    # one minute later the click's tile is out too
    assert user(tiles, HOUR + MIN)["clicks_1h"] == 0


def test_hour_windows_include_the_oldest_tile_and_not_the_one_before() -> None:
    tiles = tiles_of(
        ("add_to_cart", HOUR - 1), ("add_to_cart", HOUR),
        ("purchase", HOUR - 1), ("purchase", HOUR),
        ("impression", HOUR - 1), ("click", HOUR - 1), ("impression", HOUR),
    )  # fmt: skip
    # as of hour H0+24 the 24 h window is hours H0+1 .. H0+24
    assert user(tiles, 24 * HOUR + 5)["add_to_cart_24h"] == 1
    assert user(tiles, 24 * HOUR - 5)["add_to_cart_24h"] == 2
    # 7 d: hours H0+1 .. H0+168 as of H0+168: only the impression at T0+1h is left
    assert user(tiles, 168 * HOUR)["ctr_7d"] == 0.0
    assert user(tiles, 168 * HOUR - 1)["ctr_7d"] == 0.5
    # 30 d: hours H0+1 .. H0+720 as of H0+720
    assert user(tiles, 720 * HOUR + 1)["purchases_30d"] == 1
    assert user(tiles, 720 * HOUR + 1)["spend_30d"] == 10.0
    assert user(tiles, 720 * HOUR - 1)["purchases_30d"] == 2
    assert user(tiles, 721 * HOUR)["purchases_30d"] == 0


def test_a_late_event_counts_in_its_own_tile_and_later_tiles_are_ignored() -> None:
    tiles = tiles_of(("impression", 2 * HOUR), ("impression", 100.0))  # the second comes late
    # as of T0+1h (tile M0+60): the late one (M0+1) counts, the one at M0+120 is after as_of
    assert user(tiles, HOUR)["impressions_1h"] == 1
    assert user(tiles, HOUR + MIN)["impressions_1h"] == 0  # M0+1 has left, M0+120 not reached
    assert user(tiles, 2 * HOUR)["impressions_1h"] == 1
    assert user(tiles, 2 * HOUR)["last_event_ts"] == T0 + 2 * HOUR


def test_one_hour_counts_decay_two_hours_later_while_30_days_stay() -> None:
    tiles = tiles_of(("impression", 10.0), ("purchase", 20.0))
    assert user(tiles, 30.0)["impressions_1h"] == 1
    later = user(tiles, 2 * HOUR + 10)
    assert later["impressions_1h"] == 0
    assert later["purchases_30d"] == 1
    assert later["last_event_ts"] == T0 + 20.0


def test_ratios_divide_by_at_least_one() -> None:
    assert user(EntityTiles(), 0.0)["ctr_7d"] == 0.0
    assert user(tiles_of(("click", 1.0), ("click", 2.0)), 10.0)["ctr_7d"] == 2.0
    product = tiles_of(("impression", 1.0), ("impression", 2.0), ("impression", 3.0),
                       ("click", 4.0), ("purchase", 5.0))  # fmt: skip
    assert product.features("product", T0 + 10) == {
        "impressions_1h": 3,
        "clicks_1h": 1,
        "purchases_24h": 1,
        "ctr_24h": 1 / 3,
        "conversion_24h": 1 / 3,
    }


def test_spend_is_price_times_quantity_of_purchases() -> None:
    tiles = EntityTiles()
    tiles.add("purchase", T0 + 1, price=12.99, quantity=2)
    tiles.add("purchase", T0 + 2, price=5.5, quantity=3)
    tiles.add("add_to_cart", T0 + 3, price=100.0)  # not spent
    assert user(tiles, 10.0)["spend_30d"] == 42.48
    assert user(tiles, 10.0)["purchases_30d"] == 2


def test_an_empty_entity_reads_as_the_view_defaults() -> None:
    from flows.features.definitions import get_view

    assert user(EntityTiles(), 0.0) == get_view("user").defaults()
    assert EntityTiles().ages("user", T0) == dict.fromkeys(get_view("user").names)


def test_ages_count_back_to_the_newest_event_of_each_part() -> None:
    tiles = tiles_of(("impression", 10.0), ("click", 100.0), ("purchase", 50.0))
    ages = tiles.ages("user", T0 + 1000)
    assert ages == {
        "impressions_1h": 990.0,
        "clicks_1h": 900.0,
        "add_to_cart_24h": None,
        "purchases_30d": 950.0,
        "spend_30d": 950.0,
        "ctr_7d": 900.0,  # the newer of clicks and impressions
        "last_event_ts": 900.0,
    }
    # a late impression, older than the newest, changes nothing
    tiles.add("impression", T0 + 5.0)
    assert tiles.ages("user", T0 + 1000)["impressions_1h"] == 990.0


def test_unknown_event_types_and_incomplete_purchases_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown event_type 'view'"):
        EntityTiles().add("view", T0)
    tiles = EntityTiles()
    with pytest.raises(ValueError, match="needs price and quantity"):
        tiles.add("purchase", T0, price=3.0)
    assert tiles == EntityTiles()  # nothing half-counted


def test_events_behind_the_retention_are_ignored() -> None:
    newest = 40 * DAY
    tiles = tiles_of(("purchase", newest), ("purchase", newest - 721 * HOUR), ("click", 1.0))
    assert user(tiles, newest)["purchases_30d"] == 1
    assert tiles.ages("user", T0 + newest)["clicks_1h"] is None  # forgotten with its tile
    # two hours back only the minute tile is behind the retention: the hour tile counts
    tiles.add("impression", T0 + newest - 2 * HOUR - 1)
    assert tiles.window_total(Measure.IMPRESSIONS, DAY_WINDOW, T0 + newest) == 1
    assert user(tiles, newest)["impressions_1h"] == 0


def _random_events(rng: random.Random, count: int, span: float) -> list[tuple[str, float]]:
    kinds = ["impression"] * 6 + ["click"] * 2 + ["add_to_cart", "purchase"]
    return [(rng.choice(kinds), round(rng.uniform(0.0, span), 3)) for _ in range(count)]


def _brute_force(events: list[tuple[str, float]], offset: float) -> dict[str, object]:
    """The documented window semantics, event by event (for as_of >= newest - 1 h)."""

    def count(kind: str, size: float, tiles: int) -> int:
        high = (T0 + offset) // size
        return sum(1 for k, s in events if k == kind and high - tiles < (T0 + s) // size <= high)

    return {
        "impressions_1h": count("impression", MIN, 60),
        "clicks_1h": count("click", MIN, 60),
        "add_to_cart_24h": count("add_to_cart", HOUR, 24),
        "purchases_30d": count("purchase", HOUR, 720),
        "ctr_7d": count("click", HOUR, 168) / max(count("impression", HOUR, 168), 1),
    }


def test_features_match_a_brute_force_count() -> None:
    rng = random.Random(3)
    events = _random_events(rng, 400, 3 * DAY)
    events += [("impression", 3 * DAY - rng.uniform(0, 2 * HOUR)) for _ in range(50)]
    tiles = tiles_of(*events)
    newest = max(s for _, s in events)
    for offset in (newest - HOUR, newest - 17 * MIN, newest, newest + 45 * MIN, newest + DAY):
        got = user(tiles, offset)
        assert {k: got[k] for k in _brute_force(events, offset)} == _brute_force(events, offset)


def test_final_state_does_not_depend_on_the_order_of_events() -> None:
    rng = random.Random(7)
    # 40 days, so that some events fall behind the 30-day retention; carts only in
    # the first week, so that their newest time must be forgotten too
    events = [e for e in _random_events(rng, 300, 40 * DAY) if e[0] != "add_to_cart"]
    events += [("add_to_cart", rng.uniform(0, 7 * DAY)) for _ in range(10)]
    events += [("impression", 40 * DAY - rng.uniform(0, 3 * HOUR)) for _ in range(30)]
    reference = tiles_of(*sorted(events, key=lambda e: e[1]))
    newest = max(s for _, s in events)
    for _ in range(5):
        rng.shuffle(events)
        shuffled = tiles_of(*events)
        assert encode(shuffled) == encode(reference)
        for offset in (newest - HOUR, newest, newest + 2 * HOUR):
            assert user(shuffled, offset) == user(reference, offset)
            assert shuffled.ages("user", T0 + offset) == reference.ages("user", T0 + offset)


def test_a_long_history_keeps_only_the_retained_tiles() -> None:
    # 70 days of clicks every 20 minutes: compaction runs, and the state equals one
    # built from the retained events alone
    events = [("click", i * 20 * MIN) for i in range(70 * 72)]
    newest = events[-1][1]
    kept = [e for e in events if (T0 + e[1]) // HOUR > (T0 + newest) // HOUR - 721]
    full, retained = tiles_of(*events), tiles_of(*kept)
    assert encode(full) == encode(retained)
    assert user(full, newest)["ctr_7d"] == 7 * 72


def test_reads_up_to_an_hour_before_the_newest_event_are_exact() -> None:
    # the stream accepts events up to 5 minutes ahead, so "now" can trail the newest
    # event: retention keeps one hour tile and an hour of minute tiles more than windows
    tiles = tiles_of(("purchase", 0.0), ("purchase", 720 * HOUR + 30 * MIN))
    assert user(tiles, 720 * HOUR - MIN)["purchases_30d"] == 1
    tiles = tiles_of(("impression", 0.0), ("click", 119.5 * MIN))
    assert user(tiles, 59.5 * MIN)["impressions_1h"] == 1
