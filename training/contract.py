"""The serving feature contract: the columns every plant-recommender model scores.

One row is one (user, product) pair in a context (region, device) at a moment
``as_of``. The builder of training sets, the incremental learner, the promotion
gates and the serving API all make rows with :func:`assemble_rows`, from the
feature views of :mod:`flows.features.definitions` and the catalog, so what a
model learns from is exactly what it is served (training/serving skew = 0).

Counts keep the view's integer dtype; ``last_event_ts`` becomes
``user_hours_since_last_event`` (capped at 30 days, which is also the default)
because an absolute time tells a model nothing that carries over to tomorrow.

>>> COLUMNS[:4]
('user_id', 'product_id', 'region', 'device')
>>> len(COLUMNS), input_signature_spec()["user_ctr_7d"]
(21, 'double')
>>> from infra.plantly.catalog import load_catalog
>>> catalog = load_catalog()
>>> pid = next(iter(catalog))
>>> rows = assemble_rows("u-1", "US-CA", "mobile", {}, [(pid, {})], catalog, as_of=0.0)
>>> rows["user_hours_since_last_event"], rows["product_ctr_24h"], rows["device"]
([720.0], [0.0], ['mobile'])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final, Literal, TypeAlias

import numpy as np
import pandas as pd

from flows.features.definitions import FEATURE_SET_VERSION, PRODUCT_VIEW, USER_VIEW, FeatureValue
from infra.plantly.catalog import Catalog

ColumnType = Literal["string", "long", "double"]

# The context a request may leave out: a model sees "unknown" and learned no effect for it.
UNKNOWN_DEVICE: Final = "unknown"
DEVICES: Final = ("mobile", "desktop", "tablet", UNKNOWN_DEVICE)
RECENCY_CAP_H: Final = 30 * 24.0

IDS: Final = ("user_id", "product_id")
CATEGORICALS: Final = ("region", "device", "category", "light")
_PRODUCT_ATTRIBUTES: Final[tuple[tuple[str, ColumnType], ...]] = (
    ("pet_safe", "long"),
    ("price", "double"),
    ("invasive_here", "long"),
)
_USER_FEATURES: Final = tuple(name for name in USER_VIEW.names if name != "last_event_ts")
_DTYPE_TO_COLUMN: Final[dict[str, ColumnType]] = {"int64": "long", "float64": "double"}

SPEC: Final[tuple[tuple[str, ColumnType], ...]] = (
    *((name, "string") for name in (*IDS, *CATEGORICALS)),
    *_PRODUCT_ATTRIBUTES,
    *((f"user_{n}", _DTYPE_TO_COLUMN[USER_VIEW.dtypes[n]]) for n in _USER_FEATURES),
    ("user_hours_since_last_event", "double"),
    *((f"product_{n}", _DTYPE_TO_COLUMN[PRODUCT_VIEW.dtypes[n]]) for n in PRODUCT_VIEW.names),
)
COLUMNS: Final = tuple(name for name, _ in SPEC)
NUMERIC: Final = tuple(name for name, kind in SPEC if kind != "string")
CONTRACT_VERSION: Final = FEATURE_SET_VERSION
"""Bumped with the feature set: a model trained on another version is refused by the gates."""

# What models return: one score per input row, for the product the row names.
OUTPUT_COLUMNS: Final = ("product_id", "score")

Columns = dict[str, list[object]]


class RowBatch:
    """Contract rows as columns, without pandas: what serving hands a model.

    ``batch[name]`` is a numpy array (converted once, on first access) and
    ``len(batch)`` the number of rows — the two things a :class:`Scorer
    <training.pyfunc.Scorer>` may use, which a pandas DataFrame offers too. A
    DataFrame of 50 rows costs ~0.4 ms to build; this costs microseconds.

    >>> batch = RowBatch({"price": [4.5, 12.0], "product_id": ["a", "b"]})
    >>> len(batch), batch["price"].dtype, batch["product_id"].tolist()
    (2, dtype('float64'), ['a', 'b'])
    >>> batch.to_pandas().shape
    (2, 2)
    """

    __slots__ = ("_arrays", "_columns", "_length")

    def __init__(self, columns: Mapping[str, Sequence[object] | np.ndarray]) -> None:
        self._columns = columns
        self._arrays: dict[str, np.ndarray] = {}
        self._length = len(next(iter(columns.values()))) if columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        array = self._arrays.get(name)
        if array is None:
            array = self._arrays[name] = np.asarray(self._columns[name])
        return array

    def values(self, name: str) -> Sequence[object] | np.ndarray:
        """The column as it was given (a list from :func:`assemble_rows`), unconverted."""
        return self._columns[name]

    def __len__(self) -> int:
        return self._length

    @property
    def columns(self) -> list[str]:
        return list(self._columns)

    @property
    def empty(self) -> bool:
        return self._length == 0

    def column_lists(self) -> dict[str, list[object]]:
        """The columns as plain lists (for JSON); lists given are not copied."""
        return {
            name: values if isinstance(values, list) else list(values)
            for name, values in self._columns.items()
        }

    def to_pandas(self) -> pd.DataFrame:
        return pd.DataFrame({name: self[name] for name in self._columns})


Rows: TypeAlias = pd.DataFrame | RowBatch


def column_values(rows: Rows, name: str) -> Sequence[object] | np.ndarray:
    """One column, as cheaply as ``rows`` allows: the list behind a :class:`RowBatch`.

    Iterating a Python list of strings is several times faster than iterating
    the numpy array made from it, which is what a model's encoder does per row.

    >>> column_values(RowBatch({"region": ["US-CA", "US-CA"]}), "region")
    ['US-CA', 'US-CA']
    >>> column_values(pd.DataFrame({"region": ["US-CA"]}), "region").tolist()
    ['US-CA']
    """
    if isinstance(rows, RowBatch):
        return rows.values(name)
    return np.asarray(rows[name])


def input_signature_spec() -> dict[str, ColumnType]:
    """Column name to MLflow column type, in contract order."""
    return dict(SPEC)


def empty_columns() -> Columns:
    return {name: [] for name in COLUMNS}


def append_row(
    columns: Columns,
    user_id: str,
    product_id: str,
    region: str,
    device: str,
    user: Mapping[str, FeatureValue],
    product: Mapping[str, FeatureValue],
    catalog: Catalog,
    as_of: float,
) -> None:
    """Add one (user, product) row; missing features take the view's defaults."""
    plant = catalog[product_id]
    columns["user_id"].append(user_id)
    columns["product_id"].append(product_id)
    columns["region"].append(region)
    columns["device"].append(device)
    columns["category"].append(plant.category)
    columns["light"].append(plant.light)
    columns["pet_safe"].append(int(plant.pet_safe))
    columns["price"].append(float(plant.price))
    columns["invasive_here"].append(int(region in plant.invasive_regions))
    for name in _USER_FEATURES:
        columns[f"user_{name}"].append(user.get(name, _USER_DEFAULTS[name]))
    columns["user_hours_since_last_event"].append(hours_since(user.get("last_event_ts"), as_of))
    for name in PRODUCT_VIEW.names:
        columns[f"product_{name}"].append(product.get(name, _PRODUCT_DEFAULTS[name]))


def assemble_rows(
    user_id: str,
    region: str,
    device: str | None,
    user: Mapping[str, FeatureValue],
    products: Sequence[tuple[str, Mapping[str, FeatureValue]]],
    catalog: Catalog,
    as_of: float,
) -> Columns:
    """Rows for one user and many candidate products, as columns in contract order.

    The same values as one :func:`append_row` per product (a test holds the two
    equal), built a column at a time: the user's and the context's columns are
    one value repeated, which serving would otherwise append 50 times a request.
    """
    n = len(products)
    plants = [catalog[product_id] for product_id, _ in products]
    product_features = [features for _, features in products]
    columns: dict[str, list[object]] = {
        "user_id": [user_id] * n,
        "product_id": [product_id for product_id, _ in products],
        "region": [region] * n,
        "device": [device or UNKNOWN_DEVICE] * n,
        "category": [plant.category for plant in plants],
        "light": [plant.light for plant in plants],
        "pet_safe": [int(plant.pet_safe) for plant in plants],
        "price": [float(plant.price) for plant in plants],
        "invasive_here": [int(region in plant.invasive_regions) for plant in plants],
    }
    for name in _USER_FEATURES:
        columns[f"user_{name}"] = [user.get(name, _USER_DEFAULTS[name])] * n
    recency = hours_since(user.get("last_event_ts"), as_of)
    columns["user_hours_since_last_event"] = [recency] * n
    for name in PRODUCT_VIEW.names:
        default = _PRODUCT_DEFAULTS[name]
        columns[f"product_{name}"] = [features.get(name, default) for features in product_features]
    return columns


def hours_since(last_event_ts: FeatureValue, as_of: float) -> float:
    """Hours from the newest event to ``as_of``, capped; the cap when there was none.

    >>> hours_since(None, 100.0), hours_since(0.0, 7200.0)
    (720.0, 2.0)
    """
    if last_event_ts is None:
        return RECENCY_CAP_H
    return min(max(as_of - float(last_event_ts), 0.0) / 3600.0, RECENCY_CAP_H)


_USER_DEFAULTS: Final = USER_VIEW.defaults()
_PRODUCT_DEFAULTS: Final = PRODUCT_VIEW.defaults()
