"""The online encoding of EntityTiles: exact round trips, versions, damaged values."""

from __future__ import annotations

import pickle
import random

import pytest

from flows.features import codec
from flows.features.codec import (
    CODEC_VERSION,
    FeatureCodecError,
    FrozenCache,
    decode,
    decode_frozen,
    encode,
)
from flows.features.definitions import FeatureView, get_view
from flows.features.tiles import EntityTiles

T0 = 1_767_225_600.0
DAY = 86400.0
KINDS = ("impression", "impression", "impression", "click", "add_to_cart", "purchase")


def random_tiles(rng: random.Random, events: int, span: float) -> EntityTiles:
    tiles = EntityTiles()
    for _ in range(events):
        tiles.add(
            rng.choice(KINDS), T0 + rng.uniform(0, span), rng.uniform(0, 80), rng.randint(1, 4)
        )
    return tiles


def test_an_empty_state_round_trips() -> None:
    data = encode(EntityTiles())
    assert data[0] == CODEC_VERSION and len(data) == 55
    assert decode(data) == EntityTiles()
    assert decode(data).last_event_ts is None


@pytest.mark.parametrize(
    ("events", "span"), [(1, 0.0), (50, 3600.0), (400, 10 * DAY), (800, 45 * DAY)]
)
def test_round_trips_are_exact(events: int, span: float) -> None:
    rng = random.Random(events)
    tiles = random_tiles(rng, events, span)
    data = encode(tiles)
    back = decode(data)
    assert back == tiles
    assert encode(back) == data
    for as_of in (T0 + span, T0 + span + 1234.5, T0 + span + 2 * DAY):
        for view in ("user", "product"):
            assert back.features(view, as_of) == tiles.features(view, as_of)
            assert back.ages(view, as_of) == tiles.ages(view, as_of)


@pytest.mark.parametrize("zero_copy", [True, False])
def test_frozen_reads_equal_the_counting_state(
    zero_copy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codec, "_ZERO_COPY", zero_copy)
    rng = random.Random(11)
    for events, span in ((0, 0.0), (30, 2 * 3600.0), (600, 35 * DAY)):
        tiles = random_tiles(rng, events, span)
        frozen = decode_frozen(encode(tiles))
        assert frozen == tiles and frozen.thaw() == tiles
        assert encode(frozen.thaw()) == encode(tiles)
        newest = tiles.last_event_ts or T0
        # earlier than an hour before the newest event too: floors clamp both the same way
        for as_of in [newest + rng.uniform(-3 * DAY, 2 * DAY) for _ in range(20)]:
            for view in ("user", "product"):
                assert frozen.features(view, as_of) == tiles.features(view, as_of)
                assert frozen.ages(view, as_of) == tiles.ages(view, as_of)


def test_a_decoded_state_keeps_counting_like_the_original() -> None:
    rng = random.Random(5)
    original = random_tiles(rng, 300, 20 * DAY)
    decoded = decode(encode(original))
    later = [(rng.choice(KINDS), T0 + rng.uniform(-15 * DAY, 40 * DAY)) for _ in range(300)]
    for tiles in (original, decoded):
        for kind, ts in later:
            tiles.add(kind, ts, 9.99, 2)
    assert decoded == original
    assert encode(decoded) == encode(original)


def test_a_pickled_snapshot_restores_the_same_state() -> None:
    # what the stream's recovery snapshots hold
    tiles = random_tiles(random.Random(9), 200, 40 * DAY)
    restored = EntityTiles.from_snapshot(pickle.loads(pickle.dumps(tiles.snapshot())))
    assert restored == tiles and encode(restored) == encode(tiles)
    restored.add("click", T0 + 41 * DAY)
    tiles.add("click", T0 + 41 * DAY)
    assert encode(restored) == encode(tiles)


def test_spend_survives_in_exact_cents() -> None:
    tiles = EntityTiles()
    for _ in range(1000):
        tiles.add("purchase", T0, price=0.1, quantity=3)
    assert decode(encode(tiles)).features("user", T0)["spend_30d"] == 300.0


def test_another_version_is_refused_with_a_clear_error() -> None:
    data = bytearray(encode(random_tiles(random.Random(1), 20, DAY)))
    data[0] = CODEC_VERSION + 1
    with pytest.raises(FeatureCodecError, match=r"codec version 2, this code reads version 1"):
        decode(bytes(data))
    with pytest.raises(FeatureCodecError, match="codec version none"):
        decode(b"")


def test_damaged_values_are_refused() -> None:
    data = encode(random_tiles(random.Random(2), 20, DAY))
    for damaged in (data[:-1], data + b"\0", data[:30]):
        with pytest.raises(FeatureCodecError, match="damaged online feature value") as error:
            decode(damaged)
        assert error.value.code == "feature_codec_error"


def test_cached_reads_equal_the_counting_state_minute_after_minute() -> None:
    # the cache keeps each state's totals for the minute of the last read: reads in the
    # same minute, the next ones, across hours and back in time must all stay exact
    rng = random.Random(21)
    cache = FrozenCache()
    states = [random_tiles(rng, events, span) for events, span in ((0, 0.0), (300, 3 * DAY))]
    states += [random_tiles(rng, 900, 2 * 3600.0), random_tiles(rng, 600, 35 * DAY)]
    for entity, tiles in enumerate(states):
        newest = tiles.last_event_ts or T0
        steps = [rng.choice((0.0, 0.4, 7.0, 59.0, 61.0, 3600.0, -90.0)) for _ in range(80)]
        as_of = newest - 2 * 3600.0
        for step in steps:
            as_of += step
            for view in (get_view("user"), get_view("product")):
                expected = (tiles.features(view, as_of), tiles.ages(view, as_of))
                data = bytes(bytearray(encode(tiles)))  # a fresh object, as Redis hands out
                assert cache.read(view, f"e-{entity}", data, as_of) == expected
    assert len(cache) == 2 * len(states)  # per view and entity


def test_a_changed_value_replaces_the_kept_state() -> None:
    cache, view = FrozenCache(), get_view("user")
    tiles = random_tiles(random.Random(3), 200, DAY)
    for _ in range(2):
        cache.read(view, "u-1", encode(tiles), T0 + DAY)
    tiles.add("click", T0 + DAY - 30.0)  # the stream moved the shopper on
    features, ages = cache.read(view, "u-1", encode(tiles), T0 + DAY)
    assert features == tiles.features(view, T0 + DAY) and ages["clicks_1h"] == 30.0
    assert len(cache) == 1
    # another entity with the very same bytes is a state of its own
    assert cache.read(view, "u-2", encode(tiles), T0 + DAY) == (features, ages)


def test_the_cache_is_bounded_and_lets_the_longest_kept_go_first() -> None:
    cache, view = FrozenCache(maxsize=3), get_view("product")
    values = [encode(random_tiles(random.Random(seed), 40, DAY)) for seed in range(10)]
    for entity, data in enumerate(values):
        for _ in range(2):
            cache.read(view, f"p-{entity}", data, T0 + DAY)
        assert len(cache) == min(entity + 1, 3)
    # the newest three are kept, the evicted decode anew, and every answer stays exact
    assert set(cache._kept) == {("product", f"p-{entity}") for entity in (7, 8, 9)}
    for entity, data in enumerate(values):
        expected = decode(data).features(view, T0 + DAY)
        assert cache.read(view, f"p-{entity}", bytes(bytearray(data)), T0 + DAY)[0] == expected
    cache.clear()
    assert len(cache) == 0


def test_values_are_kept_from_their_second_read_on() -> None:
    # a shopper read once should not push a hot product out
    cache, view = FrozenCache(maxsize=4), get_view("user")
    values = [encode(random_tiles(random.Random(seed), 30, DAY)) for seed in range(40)]
    for entity, data in enumerate(values):
        cache.read(view, f"u-{entity}", data, T0 + DAY)
    assert len(cache) == 0
    for entity, data in list(enumerate(values[:3])) * 2:
        cache.read(view, f"u-{entity}", data, T0 + DAY)
    assert len(cache) == 3
    for entity, data in list(enumerate(values)) * 2:
        cache.read(view, f"u-{entity}", data, T0 + DAY)
        assert len(cache) <= 4


def test_cached_reads_hand_out_dicts_of_their_own() -> None:
    cache = FrozenCache()
    data = encode(random_tiles(random.Random(4), 100, DAY))
    view = get_view("user")
    for _ in range(2):  # the second read is kept
        features, ages = cache.read(view, "u-1", data, T0 + DAY)
        features["impressions_1h"], ages["impressions_1h"] = -1, -1.0
    again = cache.read(view, "u-1", data, T0 + DAY)
    assert again == (decode(data).features(view, T0 + DAY), decode(data).ages(view, T0 + DAY))


def test_another_view_of_the_same_name_is_not_served_from_the_cache() -> None:
    cache = FrozenCache()
    data = encode(random_tiles(random.Random(6), 100, DAY))
    product = get_view("product")
    narrower = FeatureView("product", "product_id", product.features[:2])
    for _ in range(2):  # the second read is kept
        features = cache.read(product, "p-1", data, T0 + DAY)[0]
        assert features == decode(data).features(product, T0 + DAY)
    features, ages = cache.read(narrower, "p-1", data, T0 + DAY)
    assert list(features) == list(ages) == ["impressions_1h", "clicks_1h"]


def test_damaged_values_are_refused_and_not_cached() -> None:
    cache = FrozenCache()
    data = encode(random_tiles(random.Random(2), 20, DAY))
    for _ in range(2):
        with pytest.raises(FeatureCodecError, match="damaged online feature value"):
            cache.read(get_view("user"), "u-1", data[:-1], T0)
    assert len(cache) == 0
