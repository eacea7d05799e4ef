"""The plantly.shop simulator: determinism, validity, funnel, scenarios, learnability."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest

from infra.contracts import Rejection, RejectionReason, ShopEvent, ShopOrder, validate
from infra.contracts.validate import Kind
from infra.plantly.catalog import CATEGORIES, load_catalog
from infra.plantly.population import load_regions
from infra.plantly.simulator import Scenario, ShopSimulator, SimMessage, SimulationConfig

ANCHOR = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def config(**changes: Any) -> SimulationConfig:
    base: dict[str, Any] = {"events": 5_000, "seed": 11, "history_days": 7, "anchor": ANCHOR}
    return SimulationConfig(**{**base, **changes})


@cache
def events_of(cfg: SimulationConfig) -> list[dict[str, Any]]:
    messages = ShopSimulator(cfg).messages()
    return [json.loads(m.value) for m in messages if m.topic == "events" and m.expected is None]


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    def values(cfg: SimulationConfig) -> list[bytes]:
        return [m.value for m in ShopSimulator(cfg).messages()]

    first = values(config())
    assert first == values(config())
    assert first != values(config(seed=12))
    assert first != values(config(anchor=ANCHOR - timedelta(hours=1)))


def test_exact_event_count_and_unique_ids() -> None:
    messages = list(ShopSimulator(config(events=3_333)).messages())
    events = [json.loads(m.value) for m in messages if m.topic == "events"]
    assert len(events) == 3_333
    assert len({e["event_id"] for e in events}) == 3_333
    assert all(m.key == json.loads(m.value)["user_id"].encode() for m in messages)


def test_every_message_passes_the_contract() -> None:
    products = load_catalog().product_ids
    for message in ShopSimulator(config(events=20_000)).messages():
        kind: Kind = "event" if message.topic == "events" else "order"
        result = validate(message.value, kind=kind, products=products, now=ANCHOR)
        assert isinstance(result, ShopEvent | ShopOrder), (result, message.value[:200])


def test_history_times_lie_in_the_requested_window() -> None:
    times = [datetime.fromisoformat(e["event_ts"]) for e in events_of(config())]
    assert min(times) >= ANCHOR - timedelta(days=7)
    assert max(times) <= ANCHOR
    assert max(times) - min(times) > timedelta(days=6)


def test_live_mode_stamps_wall_clock() -> None:
    before = datetime.now(UTC)
    events = events_of(SimulationConfig(events=500, seed=2, users=200))
    after = datetime.now(UTC)
    times = [datetime.fromisoformat(e["event_ts"]) for e in events]
    slack = timedelta(milliseconds=2)
    assert all(before - slack <= t <= after + slack for t in times)


def test_conversion_rate_is_in_the_one_to_five_percent_range() -> None:
    counts = Counter(e["event_type"] for e in events_of(config(events=100_000)))
    rate = counts["purchase"] / counts["impression"]
    assert 0.01 <= rate <= 0.05, counts
    assert counts["impression"] > counts["click"] > counts["add_to_cart"] > counts["purchase"]


def test_every_purchase_has_one_matching_order_without_leaking_pii_into_events() -> None:
    messages = list(ShopSimulator(config(events=20_000)).messages())
    orders = [json.loads(m.value) for m in messages if m.topic == "orders"]
    purchases = [
        json.loads(m.value) for m in messages if m.topic == "events" and b'"purchase"' in m.value
    ]
    assert len(orders) == len(purchases) > 0
    for order, purchase in zip(orders, purchases, strict=True):
        item = order["items"][0]
        assert (item["product_id"], item["quantity"]) == (
            purchase["product_id"],
            purchase["quantity"],
        )
        assert order["event_ts"] == purchase["event_ts"]
        assert "@" in order["email"] and order["shipping_address"]
    assert not any(b"@" in m.value for m in messages if m.topic == "events")


def test_most_purchases_fall_inside_the_label_window() -> None:
    events = events_of(config(events=50_000))
    shown: dict[tuple[str, str], datetime] = {}
    inside = outside = 0
    for e in sorted(events, key=lambda e: e["event_ts"]):
        key = (e["user_id"], e["product_id"])
        ts = datetime.fromisoformat(e["event_ts"])
        if e["event_type"] == "impression":
            shown[key] = ts
        elif e["event_type"] == "purchase":
            if ts - shown[key] <= timedelta(minutes=30):
                inside += 1
            else:
                outside += 1
    assert inside > 0 and outside > 0
    assert 0.85 <= inside / (inside + outside) < 1.0


def conversion_by(events: list[dict[str, Any]], key: Any) -> dict[Any, float]:
    shown: Counter[Any] = Counter()
    bought: Counter[Any] = Counter()
    for e in events:
        if e["event_type"] == "impression":
            shown[key(e)] += 1
        elif e["event_type"] == "purchase":
            bought[key(e)] += 1
    return {k: bought[k] / n for k, n in shown.items() if n}


def test_purchases_depend_on_what_a_model_can_see() -> None:
    events = events_of(config(events=100_000))
    catalog = load_catalog()
    by_device = conversion_by(events, lambda e: e["device"])
    assert by_device["desktop"] > 1.3 * by_device["mobile"]
    invasive = conversion_by(events, lambda e: catalog[e["product_id"]].is_invasive_in(e["region"]))
    assert invasive[True] < 0.6 * invasive[False]
    cheap = conversion_by(events, lambda e: e["price"] < 20)
    assert cheap[True] > 1.3 * cheap[False]
    cacti_in = conversion_by(
        [e for e in events if catalog[e["product_id"]].category == "cactus"],
        lambda e: e["region"] == "US-AZ",
    )
    assert cacti_in[True] > 1.3 * cacti_in[False]


def test_users_who_clicked_a_category_buy_from_it_more() -> None:
    events = sorted(events_of(config(events=100_000)), key=lambda e: e["event_ts"])
    catalog = load_catalog()
    clicked: set[tuple[str, str]] = set()
    shown = {True: 0, False: 0}
    bought = {True: 0, False: 0}
    for e in events:
        key = (e["user_id"], catalog[e["product_id"]].category)
        if e["event_type"] == "impression":
            shown[key in clicked] += 1
        elif e["event_type"] == "purchase":
            bought[key in clicked] += 1
        elif e["event_type"] == "click":
            clicked.add(key)
    assert bought[True] / shown[True] > 2 * bought[False] / shown[False]


def test_ficus_craze_shifts_purchases_to_ficus_after_onset() -> None:
    catalog = load_catalog()
    events = events_of(config(events=60_000, scenario=Scenario.FICUS_CRAZE))
    onset = ANCHOR - timedelta(days=3.5)
    ficus = conversion_by(
        [e for e in events if catalog[e["product_id"]].genus == "Ficus"],
        lambda e: datetime.fromisoformat(e["event_ts"]) >= onset,
    )
    assert ficus[True] > 2.5 * ficus[False]


def test_pandemic_spike_brings_five_times_the_traffic_and_new_users() -> None:
    events = events_of(config(events=60_000, scenario=Scenario.PANDEMIC_SPIKE))
    times = [datetime.fromisoformat(e["event_ts"]) for e in events]
    onset = min(t for e, t in zip(events, times, strict=True) if e["user_id"].startswith("u-new"))
    before = sum(t < onset for t in times) / (onset - (ANCHOR - timedelta(days=7))).total_seconds()
    after = sum(t >= onset for t in times) / (ANCHOR - onset).total_seconds()
    assert 3.5 < after / before < 6.5
    late_users = {e["user_id"] for e, t in zip(events, times, strict=True) if t >= onset}
    assert sum(u.startswith("u-new") for u in late_users) > 100
    mobile = conversion_by(events, lambda e: e["device"])  # the mix moves to mobile
    assert set(mobile) == {"mobile", "desktop", "tablet"}


def test_bad_input_covers_every_reason_and_each_is_rejected_as_labelled() -> None:
    cfg = config(events=20_000, scenario=Scenario.BAD_INPUT, bad_fraction=0.1)
    bad: list[SimMessage] = [m for m in ShopSimulator(cfg).messages() if m.expected]
    assert 1_700 < len(bad) < 2_300
    assert {m.expected for m in bad} == set(RejectionReason)
    products = load_catalog().product_ids
    for message in bad:
        result = validate(message.value, products=products, now=ANCHOR)
        assert isinstance(result, Rejection)
        assert result.reason is message.expected, (result, message.value[:120])


def test_catalog_is_large_real_looking_and_consistent() -> None:
    catalog = load_catalog()
    assert len(catalog) >= 300
    plants = list(catalog.values())
    assert {p.category for p in plants} == set(CATEGORIES)
    regions = {r.code for r in load_regions()}
    assert all(p.invasive_regions <= regions for p in plants)
    assert sum(bool(p.invasive_regions) for p in plants) >= 25 * 3
    assert all(0 < p.price < 1_000 for p in plants)
    assert catalog.to_arrow().num_rows == len(catalog)


@pytest.mark.parametrize("scenario", list(Scenario))
def test_every_scenario_runs_live(scenario: Scenario) -> None:
    messages = list(ShopSimulator(SimulationConfig(events=300, scenario=scenario)).messages())
    assert sum(m.topic == "events" for m in messages) == 300


class _NoFicusFront:
    """A storefront that never shows a Ficus, as a model that never learned the craze."""

    def __init__(self) -> None:
        catalog = load_catalog()
        self.pick = next(p.product_id for p in catalog.plants if p.genus != "Ficus")

    def show(self, user_id: str, region: str, device: str, count: int) -> list[tuple[str, str]]:
        return [(self.pick, "r-1")] * count


def test_ficus_craze_shoppers_search_ficus_even_where_a_storefront_picks() -> None:
    catalog = load_catalog()
    cfg = config(events=20_000, scenario=Scenario.FICUS_CRAZE, onset=0.5)
    messages = ShopSimulator(cfg, storefront=_NoFicusFront()).messages()
    events = [json.loads(m.value) for m in messages if m.topic == "events"]
    impressions = [e for e in events if e["event_type"] == "impression"]
    half = len(impressions) // 2
    searched = [e for e in impressions if catalog[e["product_id"]].genus == "Ficus"]
    assert all("request_id" not in e for e in searched)  # looked up, not recommended
    before = sum(catalog[e["product_id"]].genus == "Ficus" for e in impressions[: half // 2])
    after = sum(catalog[e["product_id"]].genus == "Ficus" for e in impressions[-half // 2 :])
    assert before == 0
    assert 0.08 < after / (half // 2) < 0.22  # FICUS_SEARCH_SHARE of the positions
