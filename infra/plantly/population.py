"""The shoppers of plantly.shop: regions, latent tastes, and order PII.

The population comes from a *world seed*, separate from the traffic seed, so
every simulation run meets the same shoppers with the same tastes — a model
trained on yesterday's history still knows today's users.

>>> world = build_population(users=50, world_seed=7)
>>> len(world.users), world.users[0].user_id
(50, 'u-000000')
>>> build_population(users=50, world_seed=7).users[3] == world.users[3]
True
>>> "@example." in world.users[0].email
True
"""

from __future__ import annotations

import csv
import random
from bisect import bisect
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from itertools import accumulate

from infra.plantly.behaviour import DEVICE_SHARE, REGION_TASTES
from infra.plantly.catalog import CATEGORIES

_FIRST = (
    "olivia", "liam", "emma", "noah", "ava", "elijah", "sophia", "lucas", "mia", "mateo",
    "amelia", "levi", "harper", "ezra", "evelyn", "leo", "aria", "luca", "chloe", "theo",
    "nora", "jack", "zoe", "ivy", "omar", "priya", "wei", "hana", "lars", "ana",
)  # fmt: skip
_LAST = (
    "smith", "garcia", "chen", "nguyen", "patel", "kim", "muller", "schmidt", "brown",
    "wilson", "taylor", "lee", "martin", "lopez", "clark", "walker", "young", "hall", "allen",
    "wright", "scott", "green", "baker", "adams", "nelson", "hill",
)  # fmt: skip
_STREETS = (
    "Maple", "Oak", "Cedar", "Pine", "Elm", "Willow", "Birch", "Park", "Lake", "Hill", "Main",
    "Church", "Station", "Mill", "River", "Garden", "Meadow", "Orchard", "Forest", "Spring",
)  # fmt: skip
_SUFFIXES = ("St", "Ave", "Rd", "Ln", "Way", "Dr", "Ct")
_DOMAINS = ("example.com", "example.net", "example.org")


@dataclass(frozen=True, slots=True)
class Region:
    code: str
    country: str
    name: str
    weight: float
    cities: tuple[str, ...]
    postal_prefix: str


@cache
def load_regions() -> tuple[Region, ...]:
    text = files("infra.plantly").joinpath("data/regions.csv").read_text(encoding="utf-8")
    return tuple(
        Region(
            code=row["region"],
            country=row["country"],
            name=row["name"],
            weight=float(row["weight"]),
            cities=tuple(row["cities"].split(";")),
            postal_prefix=row["postal_prefix"],
        )
        for row in csv.DictReader(text.splitlines())
    )


@dataclass(slots=True, eq=False)
class User:
    """A shopper. ``recent_clicks`` is the only part that changes as they browse."""

    user_id: str
    region: str
    device: str
    tastes: dict[str, float]
    price_sensitivity: float
    has_pets: bool
    activity: float
    email: str
    shipping_address: str
    favourite_categories: tuple[str, ...]
    recent_clicks: dict[str, tuple[int, float]] = field(default_factory=dict)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, User) and (self.user_id, self.tastes) == (
            other.user_id,
            other.tastes,
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class Population:
    users: list[User]
    cumulative_activity: list[float]

    def pick(self, rng: random.Random) -> User:
        """A shopper, weighted by how active they are."""
        x = rng.random() * self.cumulative_activity[-1]
        return self.users[bisect(self.cumulative_activity, x)]


def _pick(rng: random.Random, choices: dict[str, float]) -> str:
    return rng.choices(list(choices), weights=list(choices.values()))[0]


def _pii(rng: random.Random, region: Region) -> tuple[str, str]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    email = f"{first}.{last}{rng.randrange(100)}@{rng.choice(_DOMAINS)}"
    street = f"{rng.randrange(1, 9999)} {rng.choice(_STREETS)} {rng.choice(_SUFFIXES)}"
    postal = f"{region.postal_prefix}{rng.randrange(1000, 9999)}"
    address = f"{street}, {rng.choice(region.cities)}, {region.name} {postal}, {region.country}"
    return email, address


def make_user(
    rng: random.Random,
    user_id: str,
    *,
    region_weights: dict[str, float] | None = None,
    device_share: dict[str, float] | None = None,
    price_sensitivity_scale: float = 1.0,
) -> User:
    """One shopper; the keyword arguments let a scenario shift who arrives."""
    regions = {r.code: r for r in load_regions()}
    code = _pick(rng, region_weights or {r.code: r.weight for r in regions.values()})
    prior = REGION_TASTES.get(code, {})
    tastes = {cat: prior.get(cat, 0.0) + rng.gauss(0.0, 0.8) for cat in CATEGORIES}
    email, address = _pii(rng, regions[code])
    return User(
        user_id=user_id,
        region=code,
        device=_pick(rng, device_share or DEVICE_SHARE),
        tastes=tastes,
        price_sensitivity=price_sensitivity_scale * rng.lognormvariate(0.0, 0.35),
        has_pets=rng.random() < 0.3,
        activity=rng.lognormvariate(0.0, 1.0),
        email=email,
        shipping_address=address,
        favourite_categories=tuple(sorted(tastes, key=tastes.__getitem__, reverse=True)[:3]),
    )


def build_population(users: int, world_seed: int) -> Population:
    rng = random.Random(world_seed)
    people = [make_user(rng, f"u-{n:06d}") for n in range(users)]
    return Population(people, list(accumulate(u.activity for u in people)))
