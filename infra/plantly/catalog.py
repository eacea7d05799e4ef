"""The plantly.shop catalog: real species, sold in three sizes each.

The species list (``data/species.csv``) names each plant's category, light
needs, pet safety and the regions where it is invasive. Validation reads the
product ids, and the compliance filter reads ``invasive_regions``, from the
``catalog/products`` Delta table that :func:`ensure_catalog_table` writes.

>>> catalog = load_catalog()
>>> len(catalog) >= 300
True
>>> plant = catalog["ficus-lyrata-3gal"]
>>> plant.genus, plant.category, plant.size
('Ficus', 'tree', '3gal')
>>> catalog["lantana-camara-6in"].is_invasive_in("US-FL")
True
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

import pyarrow as pa

from infra.contracts.tables import CATALOG_PRODUCTS, TableName
from infra.settings import Settings

# Bump when the species data or the size ladder changes: the catalog table is
# rewritten once per version (a Delta app transaction records which it holds).
CATALOG_VERSION = 1
CATALOG_APP_ID = "tributary-catalog"

CATEGORIES = (
    "foliage", "succulent", "cactus", "fern", "palm", "flowering",
    "herb", "shrub", "vine", "aquatic", "grass", "tree",
)  # fmt: skip

_POTTED = (("4in", "4-inch pot", 0.55), ("6in", "6-inch pot", 1.0), ("10in", "10-inch pot", 2.4))
_NURSERY = (("1gal", "1-gallon", 1.0), ("3gal", "3-gallon", 2.2), ("7gal", "7-gallon", 4.5))
_NURSERY_CATEGORIES = frozenset({"shrub", "tree", "grass"})


@dataclass(frozen=True, slots=True)
class Plant:
    """One product: a species in one size."""

    product_id: str
    name: str
    species: str
    genus: str
    category: str
    size: str
    price: float
    light: str
    pet_safe: bool
    invasive_regions: frozenset[str]

    def is_invasive_in(self, region: str) -> bool:
        return region in self.invasive_regions


class Catalog(Mapping[str, Plant]):
    """Products by id, in a stable order."""

    def __init__(self, plants: list[Plant]) -> None:
        self.plants = plants
        self._by_id = {plant.product_id: plant for plant in plants}
        if len(self._by_id) != len(plants):
            raise ValueError("duplicate product ids in the catalog")

    def __getitem__(self, product_id: str) -> Plant:
        return self._by_id[product_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_id)

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def product_ids(self) -> frozenset[str]:
        return frozenset(self._by_id)

    def to_arrow(self) -> pa.Table:
        rows = [
            {
                "product_id": p.product_id,
                "name": p.name,
                "species": p.species,
                "category": p.category,
                "price": p.price,
                "light": p.light,
                "pet_safe": p.pet_safe,
                "invasive_regions": sorted(p.invasive_regions),
            }
            for p in self.plants
        ]
        return pa.Table.from_pylist(rows, schema=CATALOG_PRODUCTS)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _shop_price(base: float, factor: float) -> float:
    """Round to the shop's .99 price points."""
    return max(round(base * factor) - 0.01, 2.99)


def _sizes(category: str) -> tuple[tuple[str, str, float], ...]:
    return _NURSERY if category in _NURSERY_CATEGORIES else _POTTED


@cache
def load_catalog() -> Catalog:
    """The bundled catalog (read once per process from package data)."""
    text = files("infra.plantly").joinpath("data/species.csv").read_text(encoding="utf-8")
    plants: list[Plant] = []
    for row in csv.DictReader(text.splitlines()):
        regions = frozenset(code for code in row["invasive_regions"].split(";") if code)
        for size, label, factor in _sizes(row["category"]):
            plants.append(
                Plant(
                    product_id=f"{_slug(row['species'])}-{size}",
                    name=f"{row['common_name']} ({label})",
                    species=row["species"],
                    genus=row["genus"],
                    category=row["category"],
                    size=size,
                    price=_shop_price(float(row["base_price"]), factor),
                    light=row["light"],
                    pet_safe=row["pet_safe"].strip().lower() == "true",
                    invasive_regions=regions,
                )
            )
    return Catalog(plants)


def ensure_catalog_table(settings: Settings) -> int:
    """Write ``catalog/products`` unless this catalog version is already there.

    Returns the table's Delta version. Safe to call on every start.
    """
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

    uri = settings.table_uri(TableName.CATALOG)
    options = settings.lake_storage_options or None
    if DeltaTable.is_deltatable(uri, storage_options=options):
        table = DeltaTable(uri, storage_options=options)
        if table.transaction_version(CATALOG_APP_ID) == CATALOG_VERSION:
            return int(table.version())
    write_deltalake(
        uri,
        load_catalog().to_arrow(),
        mode="overwrite",
        schema_mode="overwrite",
        storage_options=options,
        commit_properties=CommitProperties(
            app_transactions=[Transaction(CATALOG_APP_ID, CATALOG_VERSION)],
            custom_metadata={"tributary.catalog_version": str(CATALOG_VERSION)},
        ),
    )
    return int(DeltaTable(uri, storage_options=options).version())


def read_catalog_ids(settings: Settings) -> frozenset[str]:
    """Product ids from the catalog table, as validation sees them."""
    from deltalake import DeltaTable

    uri = settings.table_uri(TableName.CATALOG)
    table = DeltaTable(uri, storage_options=settings.lake_storage_options or None)
    column = table.to_pyarrow_table(columns=["product_id"]).column("product_id")
    return frozenset(column.to_pylist())
