"""The compliance filter: never offer a plant where it is invasive.

plantly.shop must not recommend a plant listed as invasive in the shopper's
region (``Plant.invasive_regions``, ISO 3166-2 codes). Serving removes those
candidates before ranking, and the promotion gate runs the same function over a
battery of requests, so the rule has exactly one implementation.

>>> from infra.plantly.catalog import load_catalog
>>> catalog = load_catalog()
>>> banned = [p for p in catalog.values() if "US-FL" in p.invasive_regions][0].product_id
>>> allowed_candidates(catalog, "US-FL", [banned, "monstera-deliciosa-4in"])
['monstera-deliciosa-4in']
>>> invasive_in(catalog, "US-FL", [banned]) == [banned]
True
"""

from __future__ import annotations

from collections.abc import Iterable

from infra.plantly.catalog import Catalog


def allowed_candidates(catalog: Catalog, region: str, candidates: Iterable[str]) -> list[str]:
    """``candidates`` in order, less unknown products and those invasive in ``region``."""
    allowed = []
    for product_id in candidates:
        plant = catalog.get(product_id)
        if plant is not None and region not in plant.invasive_regions:
            allowed.append(product_id)
    return allowed


def invasive_in(catalog: Catalog, region: str, product_ids: Iterable[str]) -> list[str]:
    """The products of ``product_ids`` that are invasive in ``region`` (unknown ones too)."""
    return [
        product_id
        for product_id in product_ids
        if product_id not in catalog or region in catalog[product_id].invasive_regions
    ]
