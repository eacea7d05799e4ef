"""Tributary's ``user`` and ``product`` views as a Feast repository on a Redis online store.

Runs with the Python of Feast's own virtualenv (Feast's pins clash with the
project's), never imported by the project::

    feast-venv/bin/python tests/benchmarks/feast/feature_repo.py apply REPO REDIS USERS PRODUCTS
    feast-venv/bin/python tests/benchmarks/feast/feature_repo.py teardown REPO

``apply`` writes ``REPO/feature_store.yaml`` (online store: Redis at ``REDIS``,
``host:port,db=N``), registers the two feature views and writes the rows of the
``USERS`` and ``PRODUCTS`` parquet files (entity id, the view's features,
``event_timestamp``) to the online store. ``teardown`` removes what ``apply``
wrote to Redis. The feature names and types are passed in the parquet schema,
so this file needs no copy of :mod:`flows.features.definitions`.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

PROJECT = "tributary_bench"
VIEWS = (("user", "user_id"), ("product", "product_id"))


def store_yaml(redis: str) -> str:
    return (
        f"project: {PROJECT}\n"
        "provider: local\n"
        "registry: registry.db\n"
        "online_store:\n"
        "  type: redis\n"
        f'  connection_string: "{redis}"\n'
        "offline_store:\n"
        "  type: file\n"
        "entity_key_serialization_version: 3\n"
    )


def feature_view(name: str, key: str, frame: Any, parquet: Path) -> tuple[Any, Any]:
    """An entity and its view, one Feast field per feature column of ``frame``."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType  # type: ignore[import-not-found]
    from feast.types import Float64, Int64  # type: ignore[import-not-found]

    entity = Entity(name=name, join_keys=[key], value_type=ValueType.STRING)
    fields = [
        Field(name=column, dtype=Int64 if str(frame[column].dtype) == "int64" else Float64)
        for column in frame.columns
        if column not in (key, "event_timestamp")
    ]
    source = FileSource(name=f"{name}_source", path=str(parquet), timestamp_field="event_timestamp")
    view = FeatureView(
        name=name, entities=[entity], schema=fields, source=source, ttl=timedelta(0), online=True
    )
    return entity, view


def apply(repo: Path, redis: str, tables: dict[str, Path]) -> None:
    import pandas as pd
    from feast import FeatureStore

    repo.mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(store_yaml(redis))
    store = FeatureStore(repo_path=str(repo))
    frames = {name: pd.read_parquet(tables[name]) for name, _ in VIEWS}
    objects: list[Any] = []
    for name, key in VIEWS:
        objects.extend(feature_view(name, key, frames[name], tables[name]))
    store.apply(objects)
    for name, _ in VIEWS:
        store.write_to_online_store(name, df=frames[name])
        print(f"{name}: {len(frames[name])} rows written", flush=True)


def teardown(repo: Path) -> None:
    from feast import FeatureStore

    FeatureStore(repo_path=str(repo)).teardown()


def main(argv: list[str]) -> None:
    if argv[:1] == ["apply"] and len(argv) == 5:
        apply(Path(argv[1]), argv[2], {"user": Path(argv[3]), "product": Path(argv[4])})
    elif argv[:1] == ["teardown"] and len(argv) == 2:
        teardown(Path(argv[1]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
