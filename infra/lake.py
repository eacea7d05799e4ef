"""Opening the profile's Delta tables, with one clear error when a table is missing."""

from __future__ import annotations

from deltalake import DeltaTable

from infra.errors import NotFoundError
from infra.settings import Settings


def open_table(settings: Settings, name: str, hint: str = "") -> DeltaTable:
    """The latest version of table ``name`` (``bronze/events``…); NotFoundError if absent."""
    uri = settings.table_uri(name)
    options = settings.lake_storage_options or None
    if not DeltaTable.is_deltatable(uri, storage_options=options):
        raise NotFoundError(f"no {name} table at {uri}" + (f": {hint}" if hint else ""))
    return DeltaTable(uri, storage_options=options)


def table_version(settings: Settings, name: str) -> int | None:
    """The table's current version, or None when it does not exist yet."""
    try:
        return int(open_table(settings, name).version())
    except NotFoundError:
        return None
