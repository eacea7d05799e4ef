"""The model store: load before swap, canary and shadow routing, pinned versions, outages."""

from __future__ import annotations

import math
import random
import threading

import pytest

from infra.errors import NotFoundError
from serving.models import ModelStore, NoModelError
from serving.testing import FakeSource
from training.pyfunc import RecommenderModel


class SlowSource(FakeSource):
    """Loads block until released, so a test can look at the store mid-load."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.loading = threading.Event()
        self.release = threading.Event()

    def load(self, number: int) -> RecommenderModel:
        self.loading.set()
        assert self.release.wait(10)
        return super().load(number)


def test_a_new_champion_is_loaded_before_it_is_swapped_in() -> None:
    source = SlowSource({1: 0.1, 2: 0.2}, champion=1)
    source.release.set()
    store = ModelStore(source, "m")
    store.refresh()
    source.release.clear()
    source.loading.clear()
    source.aliases["champion"] = 2
    refresher = threading.Thread(target=store.refresh)
    refresher.start()
    assert source.loading.wait(10)
    assert store.route().answer.version == 1  # mid-load, requests still get v1
    source.release.set()
    refresher.join(10)
    assert store.route().answer.version == 2 and store.route().answer.alias == "champion"


def test_canary_fraction_is_respected() -> None:
    store = ModelStore(
        FakeSource({1: 0.1, 2: 0.2}, champion=1, challenger=2),
        "m",
        canary_fraction=0.2,
        rng=random.Random(7),
    )
    store.refresh()
    n, p = 2000, 0.2
    challenger = sum(store.route().answer.version == 2 for _ in range(n))
    assert abs(challenger - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_shadow_scores_the_model_that_did_not_answer() -> None:
    store = ModelStore(
        FakeSource({1: 0.1, 2: 0.2}, champion=1, challenger=2),
        "m",
        canary_fraction=0.5,
        shadow=True,
        rng=random.Random(3),
    )
    store.refresh()
    pairs = {
        (r.answer.version, r.shadow.version if r.shadow else None)
        for r in (store.route() for _ in range(200))
    }
    assert pairs == {(1, 2), (2, 1)}
    store.set_routing(0.0, shadow=False)
    assert {store.route().shadow for _ in range(50)} == {None}


def test_without_a_challenger_there_is_no_canary_nor_shadow() -> None:
    store = ModelStore(FakeSource({1: 0.1}, champion=1), "m", canary_fraction=1.0, shadow=True)
    store.refresh()
    route = store.route()
    assert route.answer.version == 1 and route.shadow is None


def test_no_champion_means_no_model() -> None:
    store = ModelStore(FakeSource({1: 0.1}), "m")
    assert store.refresh().champion is None
    with pytest.raises(NoModelError):
        store.route()


def test_a_registry_outage_keeps_the_models_held() -> None:
    source = FakeSource({1: 0.1}, champion=1)
    store = ModelStore(source, "m")
    store.refresh()
    source.failing = True
    report = store.refresh()
    assert report.error is not None and "unreachable" in report.error
    assert report.champion == 1 and store.route().answer.version == 1


def test_a_vanished_champion_alias_keeps_serving_a_vanished_challenger_stops() -> None:
    source = FakeSource({1: 0.1, 2: 0.2}, champion=1, challenger=2)
    store = ModelStore(source, "m", canary_fraction=1.0)
    store.refresh()
    source.aliases.clear()
    store.refresh()
    assert store.routing.challenger is None and store.route().answer.version == 1


def test_promoting_the_challenger_reuses_its_loaded_model() -> None:
    source = FakeSource({1: 0.1, 2: 0.2}, champion=1, challenger=2)
    store = ModelStore(source, "m")
    store.refresh()
    source.aliases = {"champion": 2}
    report = store.refresh()
    assert report.changed and source.loads == [1, 2]
    assert store.route().answer.version == 2
    assert not store.refresh().changed


def test_pinned_versions_are_cached_and_bounded() -> None:
    source = FakeSource({n: n / 10 for n in range(1, 8)}, champion=1)
    store = ModelStore(source, "m", cache_size=3)
    store.refresh()
    for number in (2, 3, 2, 4, 5):
        assert store.pinned(number).version == number and store.pinned(number).alias is None
    assert source.loads == [1, 2, 3, 4, 5]
    assert store.cached_versions() == [2, 4, 5]
    assert store.cached(5) is not None and store.cached(1) is None
    assert store.route().answer.version == 1  # the champion is held apart from the cache
    with pytest.raises(NotFoundError):
        store.pinned(99)


def test_routing_refuses_a_fraction_outside_unit_interval() -> None:
    store = ModelStore(FakeSource({}), "m")
    with pytest.raises(ValueError, match="within"):
        store.set_routing(1.2)
