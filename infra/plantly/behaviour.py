"""How plantly.shop shoppers decide: the latent model behind the simulator.

A shown plant is clicked, carted and bought with probabilities that rise with
an *affinity*: the shopper's taste for the plant's category (seeded by region),
the device, the price against the shopper's price sensitivity, pet safety for
pet owners, whether the plant is invasive where the shopper lives, and how much
the shopper clicked that category lately. Everything a model can observe —
region, device, category, price, invasiveness, recent behaviour, ids — moves
the purchase probability, so a learned model beats a popularity ranking.

>>> round(sigmoid(0.0), 2), round(funnel_probabilities(0.0)[0], 3)
(0.5, 0.039)
>>> round(conversion(0.0), 4), conversion(1.0) > conversion(0.0)
(0.0047, True)
"""

from __future__ import annotations

import math
from typing import Final

# Regional taste priors, in logits: dry states like cacti, rainy ones ferns,
# apartment cities houseplants, English gardens flowers and shrubs.
REGION_TASTES: Final[dict[str, dict[str, float]]] = {
    "US-AZ": {"cactus": 1.2, "succulent": 0.9, "fern": -0.7, "aquatic": -0.5},
    "US-CA": {"succulent": 0.7, "cactus": 0.4, "herb": 0.3, "fern": -0.3},
    "US-TX": {"cactus": 0.6, "shrub": 0.3, "succulent": 0.3},
    "US-FL": {"palm": 1.0, "aquatic": 0.5, "foliage": 0.3, "cactus": -0.4},
    "US-HI": {"palm": 0.9, "flowering": 0.5, "foliage": 0.3},
    "US-NY": {"foliage": 0.8, "fern": 0.3, "tree": -0.7, "shrub": -0.5, "grass": -0.4},
    "US-WA": {"fern": 0.8, "tree": 0.3, "cactus": -0.5},
    "US-OR": {"fern": 0.7, "tree": 0.4, "shrub": 0.2},
    "US-GA": {"flowering": 0.5, "shrub": 0.4, "vine": 0.2},
    "US-NC": {"flowering": 0.4, "shrub": 0.5, "tree": 0.2},
    "US-MA": {"shrub": 0.4, "flowering": 0.3, "herb": 0.3},
    "US-IL": {"herb": 0.4, "flowering": 0.3, "foliage": 0.2},
    "CA-ON": {"foliage": 0.4, "herb": 0.4, "palm": -0.4},
    "CA-BC": {"fern": 0.6, "tree": 0.4, "cactus": -0.3},
    "GB-ENG": {"flowering": 0.8, "shrub": 0.6, "palm": -0.5},
    "DE-BY": {"herb": 0.7, "flowering": 0.3, "palm": -0.4},
    "AU-QLD": {"palm": 0.5, "succulent": 0.4, "grass": 0.3},
    "AU-NSW": {"succulent": 0.5, "grass": 0.3, "flowering": 0.2},
}

# Desktop shoppers convert more; mobile shoppers browse and compare prices.
DEVICE_EFFECT: Final = {"desktop": 0.35, "tablet": 0.1, "mobile": -0.25}
DEVICE_PRICE_SENSITIVITY: Final = {"desktop": 0.8, "tablet": 1.0, "mobile": 1.3}
DEVICE_SHARE: Final = {"mobile": 0.55, "desktop": 0.35, "tablet": 0.10}

PRICE_SLOPE: Final = 0.55  # logit per unit of log(price / reference)
REFERENCE_PRICE: Final = 25.0
# The checkout warns shoppers about plants invasive where they live; most give up.
INVASIVE_PENALTY: Final = -1.6
PET_SAFE_BONUS: Final = 0.5
PET_TOXIC_PENALTY: Final = -0.9
RECENT_CLICK_BOOST: Final = 0.35  # per recent click in the category, up to 3
RECENT_WINDOW_S: Final = 24 * 3600.0
MAX_RECENT_CLICKS: Final = 3

# Funnel intercepts and slopes: P(click), P(cart | click), P(buy | cart).
_FUNNEL: Final = ((-3.2, 0.8), (-1.0, 0.6), (-0.2, 0.5))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def price_term(price: float, sensitivity: float) -> float:
    return -PRICE_SLOPE * sensitivity * math.log(price / REFERENCE_PRICE)


def recent_boost(clicks_in_category: int) -> float:
    return RECENT_CLICK_BOOST * min(clicks_in_category, MAX_RECENT_CLICKS)


def funnel_probabilities(affinity: float) -> tuple[float, float, float]:
    """P(click), P(add to cart | click), P(purchase | add to cart)."""
    click, cart, buy = (sigmoid(a + b * affinity) for a, b in _FUNNEL)
    return click, cart, buy


def conversion(affinity: float) -> float:
    """P(purchase | impression) for a given affinity."""
    click, cart, buy = funnel_probabilities(affinity)
    return click * cart * buy
