"""plantly.shop traffic: sessions of impressions, clicks, carts and purchases.

>>> from datetime import UTC, datetime
>>> config = SimulationConfig(events=200, seed=1, history_days=1,
...                           anchor=datetime(2026, 11, 26, tzinfo=UTC), users=100)
>>> messages = list(ShopSimulator(config).messages())
>>> sum(m.topic == "events" for m in messages)
200
>>> [m.value for m in messages] == [m.value for m in ShopSimulator(config).messages()]
True
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from bisect import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from itertools import accumulate
from typing import Literal

from infra.contracts.rejections import RejectionReason
from infra.plantly import behaviour as bh
from infra.plantly.bad_input import REASONS, mutate
from infra.plantly.catalog import Catalog, load_catalog
from infra.plantly.encoding import encode_event, encode_json, rfc3339
from infra.plantly.population import Population, User, build_population, make_user
from infra.plantly.storefront import Storefront


class Scenario(StrEnum):
    STEADY = "steady"
    FICUS_CRAZE = "ficus-craze"  # concept drift: P(buy | features) shifts to Ficus
    PANDEMIC_SPIKE = "pandemic-spike"  # covariate drift: 5x traffic, new shoppers
    BAD_INPUT = "bad-input"  # a fraction of malformed events of every kind


FICUS_CRAZE_BOOST = 2.5
# During the craze shoppers also look Ficus up themselves: even where a storefront (the
# prediction API) picks what a session shows, this share of its positions are Ficus
# they searched for, so the craze reaches the features the model is served.
FICUS_SEARCH_SHARE = 0.15
PANDEMIC_TRAFFIC = 5.0
PANDEMIC_NEW_USER_SHARE = 0.6
PANDEMIC_REGIONS = {"US-NY": 5.0, "US-CA": 4.0, "US-IL": 3.0, "GB-ENG": 3.0, "US-FL": 2.0}
PANDEMIC_DEVICES = {"mobile": 0.8, "desktop": 0.12, "tablet": 0.08}
LATE_PURCHASE_SHARE = 0.05  # bought, but after the 30-minute label window


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. ``anchor`` ends a history; ``None`` means now."""

    events: int = 10_000
    seed: int = 0
    scenario: Scenario = Scenario.STEADY
    history_days: float = 0.0
    anchor: datetime | None = None
    users: int = 5_000
    world_seed: int = 7
    bad_fraction: float = 0.05
    onset: float = 0.5  # where in the run a drift scenario starts, as a fraction

    @property
    def live(self) -> bool:
        """Live runs stamp events with the wall clock instead of a history."""
        return self.history_days <= 0


@dataclass(frozen=True, slots=True)
class SimMessage:
    topic: Literal["events", "orders"]
    key: bytes
    value: bytes
    expected: RejectionReason | None = None  # set on deliberately bad events


@dataclass(slots=True)
class _Timed:
    ts: float
    seq: int
    message: SimMessage


class ShopSimulator:
    """Deterministic for a given config (and ``anchor``): same seed, same bytes."""

    def __init__(
        self,
        config: SimulationConfig,
        catalog: Catalog | None = None,
        storefront: Storefront | None = None,
    ) -> None:
        self.config = config
        self.catalog = catalog or load_catalog()
        # None: the shop picks what it shows; else e.g. the prediction API (closing the loop)
        self.storefront = storefront
        self.population: Population = build_population(config.users, config.world_seed)
        self.rng = random.Random(config.seed)
        self._plants = self.catalog.plants
        self._plant_index = {plant.product_id: i for i, plant in enumerate(self._plants)}
        world = random.Random(config.world_seed + 1)
        self._quality = [world.gauss(0.0, 0.5) for _ in self._plants]
        self._cum_popularity = list(accumulate(math.exp(q) for q in self._quality))
        self._by_category: dict[str, list[int]] = {}
        for index, plant in enumerate(self._plants):
            self._by_category.setdefault(plant.category, []).append(index)
        self._ficus = [i for i, p in enumerate(self._plants) if p.genus == "Ficus"]
        self._log_price = [math.log(p.price / bh.REFERENCE_PRICE) for p in self._plants]
        self.anchor_ts = config.anchor.timestamp() if config.anchor else time.time()
        self.run_id = self._run_id()
        self._new_users: list[User] = []
        self._seq = 0
        self._sessions = 0
        self._orders = 0
        self._broken_count = 0

    def _run_id(self) -> str:
        c = self.config
        # floats by repr, so that 2 and 2.0 days give the same run
        parts = (c.seed, repr(self.anchor_ts), c.scenario, c.events, repr(float(c.history_days)))
        basis = "|".join(map(str, (*parts, c.users)))
        return hashlib.blake2b(basis.encode(), digest_size=5).hexdigest()

    # -- the stream -----------------------------------------------------------

    def messages(self) -> Iterator[SimMessage]:
        """Exactly ``config.events`` messages on events, plus one order per purchase."""
        target = self.config.events
        emitted = 0
        bad = self.config.scenario is Scenario.BAD_INPUT
        while emitted < target:
            for item in self._session(emitted / target):
                message = item.message
                if message.topic == "events":
                    if emitted == target:
                        break
                    emitted += 1
                    if bad and self.rng.random() < self.config.bad_fraction:
                        message = self._broken(message)
                yield message

    def traffic_multiplier(self, fraction_done: float) -> float:
        """How much faster than the base rate traffic flows at this point."""
        if self.config.scenario is Scenario.PANDEMIC_SPIKE and fraction_done >= self.config.onset:
            return PANDEMIC_TRAFFIC
        return 1.0

    def _broken(self, message: SimMessage) -> SimMessage:
        reason = REASONS[self._broken_count % len(REASONS)]
        self._broken_count += 1
        value = mutate(message.value, reason, time.time() if self.config.live else self.anchor_ts)
        return SimMessage("events", message.key, value, expected=reason)

    # -- one shopping session -------------------------------------------------

    def _session_start(self, fraction: float) -> float:
        if self.config.live:
            return time.time()
        span = self.config.history_days * 86400.0
        return self.anchor_ts - span * (1.0 - self._time_fraction(fraction))

    def _time_fraction(self, f: float) -> float:
        """Share of the history's time elapsed after a share ``f`` of its events."""
        if self.config.scenario is not Scenario.PANDEMIC_SPIKE:
            return f
        onset = self.config.onset
        slope = 1.0 / (onset + (1.0 - onset) / PANDEMIC_TRAFFIC)
        if f < onset:
            return f * slope
        return onset * slope + (f - onset) * slope / PANDEMIC_TRAFFIC

    def _drifted(self, fraction: float) -> bool:
        return self.config.scenario in (Scenario.FICUS_CRAZE, Scenario.PANDEMIC_SPIKE) and (
            fraction >= self.config.onset
        )

    def _session(self, fraction: float) -> list[_Timed]:
        rng = self.rng
        drifted = self._drifted(fraction)
        user = self._pick_user(drifted)
        t = self._session_start(fraction)
        self._sessions += 1
        session_id = f"s-{self.run_id}-{self._sessions}"
        out: list[_Timed] = []
        count = 1 + int(rng.expovariate(1 / 7.0))
        shown = self._shown(user, count)
        for position in range(count):
            if position < len(shown) and not self._searches_ficus(drifted):
                index, request_id = shown[position]
            elif position < len(shown):
                index, request_id = self.rng.choice(self._ficus), None
            else:
                index, request_id = self._display(user, drifted), None
            self._impression(user, index, t, session_id, drifted, out, request_id)
            t += rng.uniform(3.0, 40.0)
        if not self.config.live:
            out.sort(key=lambda item: (item.ts, item.seq))
        return out

    def _searches_ficus(self, drifted: bool) -> bool:
        """A craze shopper looks for a Ficus instead of the storefront's pick."""
        craze = drifted and self.config.scenario is Scenario.FICUS_CRAZE
        # the random draw only happens during a craze, so other runs keep their bytes
        return craze and self.storefront is not None and self.rng.random() < FICUS_SEARCH_SHARE

    def _shown(self, user: User, count: int) -> list[tuple[int, str | None]]:
        """The storefront's picks for this session (none without one), as plant indices."""
        if self.storefront is None:
            return []
        picks = self.storefront.show(user.user_id, user.region, user.device, count)
        return [(self._plant_index[pid], rid) for pid, rid in picks if pid in self._plant_index]

    def _impression(
        self,
        user: User,
        index: int,
        t: float,
        session: str,
        drifted: bool,
        out: list[_Timed],
        request_id: str | None = None,
    ) -> None:
        rng = self.rng
        p_click, p_cart, p_buy = bh.funnel_probabilities(self._affinity(user, index, t, drifted))
        self._emit(out, "impression", t, user, index, session, request_id=request_id)
        if rng.random() >= p_click:
            return
        t += rng.uniform(2.0, 20.0)
        self._emit(out, "click", t, user, index, session)
        category = self._plants[index].category
        count, last = user.recent_clicks.get(category, (0, -math.inf))
        fresh = t - last <= bh.RECENT_WINDOW_S
        user.recent_clicks[category] = ((count if fresh else 0) + 1, t)
        if rng.random() >= p_cart:
            return
        t += rng.uniform(10.0, 120.0)
        self._emit(out, "add_to_cart", t, user, index, session)
        if rng.random() >= p_buy:
            return
        late = rng.random() < LATE_PURCHASE_SHARE
        t += rng.uniform(2100.0, 5400.0) if late else rng.uniform(60.0, 1500.0)
        quantity = 1 if rng.random() < 0.8 else rng.randint(2, 4)
        self._emit(out, "purchase", t, user, index, session, quantity)

    def _affinity(self, user: User, index: int, t: float, drifted: bool) -> float:
        plant = self._plants[index]
        count, last = user.recent_clicks.get(plant.category, (0, -math.inf))
        recent = count if t - last <= bh.RECENT_WINDOW_S else 0
        affinity = (
            user.tastes[plant.category]
            + self._quality[index]
            + bh.DEVICE_EFFECT[user.device]
            - bh.PRICE_SLOPE
            * user.price_sensitivity
            * bh.DEVICE_PRICE_SENSITIVITY[user.device]
            * self._log_price[index]
            + bh.recent_boost(recent)
        )
        if user.has_pets:
            affinity += bh.PET_SAFE_BONUS if plant.pet_safe else bh.PET_TOXIC_PENALTY
        if user.region in plant.invasive_regions:
            affinity += bh.INVASIVE_PENALTY
        if drifted and self.config.scenario is Scenario.FICUS_CRAZE and plant.genus == "Ficus":
            affinity += FICUS_CRAZE_BOOST
        return affinity

    def _display(self, user: User, drifted: bool) -> int:
        """What the shop shows: mostly popular plants, some from favourite categories."""
        rng = self.rng
        roll = rng.random()
        if drifted and self.config.scenario is Scenario.FICUS_CRAZE and roll < 0.15:
            return rng.choice(self._ficus)
        if roll < 0.35:
            return rng.choice(self._by_category[rng.choice(user.favourite_categories)])
        if roll < 0.85:
            x = rng.random() * self._cum_popularity[-1]
            return min(bisect(self._cum_popularity, x), len(self._plants) - 1)
        return rng.randrange(len(self._plants))

    def _pick_user(self, drifted: bool) -> User:
        rng = self.rng
        pandemic = drifted and self.config.scenario is Scenario.PANDEMIC_SPIKE
        if not pandemic or rng.random() >= PANDEMIC_NEW_USER_SHARE:
            return self.population.pick(rng)
        if self._new_users and rng.random() < 0.5:
            return rng.choice(self._new_users)
        user = make_user(
            rng,
            f"u-new-{self.run_id}-{len(self._new_users)}",
            region_weights=PANDEMIC_REGIONS,
            device_share=PANDEMIC_DEVICES,
            price_sensitivity_scale=1.4,
        )
        self._new_users.append(user)
        return user

    def _emit(
        self,
        out: list[_Timed],
        event_type: str,
        t: float,
        user: User,
        index: int,
        session: str,
        quantity: int | None = None,
        request_id: str | None = None,
    ) -> None:
        t = self._session_start(0.0) if self.config.live else min(t, self.anchor_ts)
        plant = self._plants[index]
        self._seq += 1
        event_id = f"e-{self.run_id}-{self._seq}"
        key = user.user_id.encode()
        value = encode_event(
            event_id, event_type, t, user.user_id, plant.product_id, session,
            user.region, user.device, plant.price, quantity, request_id,
        )  # fmt: skip
        out.append(_Timed(t, self._seq, SimMessage("events", key, value)))
        if quantity is not None:
            order = self._order(t, user, plant.product_id, plant.price, quantity)
            out.append(_Timed(t, self._seq, order))

    def _order(self, t: float, user: User, product_id: str, price: float, qty: int) -> SimMessage:
        self._orders += 1
        order = {
            "order_id": f"o-{self.run_id}-{self._orders}",
            "event_ts": rfc3339(t),
            "user_id": user.user_id,
            "items": [{"product_id": product_id, "quantity": qty, "unit_price": price}],
            "total": round(price * qty, 2),
            "email": user.email,
            "shipping_address": user.shipping_address,
            "schema_version": 1,
        }
        return SimMessage("orders", user.user_id.encode(), encode_json(order))
