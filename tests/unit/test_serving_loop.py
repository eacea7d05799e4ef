"""Closing the loop: the simulator shows what a storefront picks, tagged with its request."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from infra.plantly.catalog import load_catalog
from infra.plantly.simulator import ShopSimulator, SimulationConfig

PICKS = [p.product_id for p in load_catalog().values()][:3]


class FixedStorefront:
    """Always the same three plants; one request id per session."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str, int]] = []

    def show(self, user_id: str, region: str, device: str, count: int) -> list[tuple[str, str]]:
        self.asked.append((user_id, region, device, count))
        request_id = f"r-{len(self.asked)}"
        return [(pid, request_id) for pid in PICKS[:count]]


def impressions(simulator: ShopSimulator) -> list[dict[str, object]]:
    events = [json.loads(m.value) for m in simulator.messages() if m.topic == "events"]
    return [e for e in events if e["event_type"] == "impression"]


def test_impressions_of_storefront_picks_carry_the_request_id() -> None:
    front = FixedStorefront()
    config = SimulationConfig(events=500, seed=4, users=50)
    shown = impressions(ShopSimulator(config, storefront=front))
    tagged = [e for e in shown if "request_id" in e]
    assert tagged and {e["product_id"] for e in tagged} <= set(PICKS)
    # sessions longer than three impressions fill up with the shop's own picks, untagged
    assert any("request_id" not in e for e in shown)
    assert len({e["request_id"] for e in tagged}) == len(front.asked)
    user_id, region, device, count = front.asked[0]
    assert region[2] == "-"
    assert user_id.startswith("u-") and device in {"mobile", "desktop", "tablet"} and count >= 1


class SilentStorefront:
    """An API that never answers."""

    def show(self, user_id: str, region: str, device: str, count: int) -> list[tuple[str, str]]:
        return []


def test_a_storefront_that_answers_nothing_leaves_the_shop_as_it_was() -> None:
    anchor = datetime(2026, 11, 26, tzinfo=UTC)
    config = SimulationConfig(events=300, seed=4, users=50, history_days=1, anchor=anchor)
    plain = [m.value for m in ShopSimulator(config).messages()]
    assert plain == [
        m.value for m in ShopSimulator(config, storefront=SilentStorefront()).messages()
    ]
    assert not any(b"request_id" in value for value in plain)
