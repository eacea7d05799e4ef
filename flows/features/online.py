"""The online store: one Redis value per entity, read N entities per round trip.

Key ``{settings.redis_key_prefix}fv:{view}:{entity_id}`` (``dev:fv:user:u-42``);
value :func:`flows.features.codec.encode` of the entity's :class:`EntityTiles`,
so a read computes the windows as of the moment it is made. Writes store
absolute state (SET with EX), which makes replays and retries idempotent; a key
expires after :data:`DEFAULT_TTL_S` without a write, after which the entity
reads as missing (its defaults): by then every window of it is empty anyway,
only ``last_event_ts`` reads None instead of a time over 31 days old.

Clients must return bytes (``decode_responses=False``, the default). The sync
and ``redis.asyncio`` readers share everything but the one MGET call, including
one :class:`~flows.features.codec.FrozenCache` per process: a value read again
(a hot product) is not decoded again, and its windows are summed once a minute.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from flows.features.codec import FrozenCache, decode, decode_frozen, encode
from flows.features.definitions import FeatureValue, FeatureView, get_view
from flows.features.tiles import EntityTiles
from infra.settings import Settings

DEFAULT_TTL_S = 31 * 86400
_DELETE_BATCH = 500

StoredValue = bytes | str | None

# decoded states of this process, shared by every reader (see FrozenCache)
_STATES = FrozenCache()


@dataclass(slots=True)
class FeatureRow:
    """One entity's features as of ``as_of`` (epoch seconds); defaults when not found.

    Not frozen: a frozen dataclass costs about a microsecond more per row to build.
    """

    view: str
    entity_id: str
    found: bool
    features: dict[str, FeatureValue]
    ages: dict[str, float | None]
    as_of: float


def feature_key(settings: Settings, view: str, entity_id: str) -> str:
    """Where one entity's state lives.

    >>> feature_key(Settings(profile="prod"), "user", "u-42")
    'prod:fv:user:u-42'
    """
    return f"{settings.redis_key_prefix}fv:{view}:{entity_id}"


def write_entities(
    client: Redis,
    settings: Settings,
    items: Iterable[tuple[str, str, EntityTiles]],
    ttl_s: int = DEFAULT_TTL_S,
) -> int:
    """Store ``(view, entity_id, tiles)`` items in one pipelined round trip; returns how many.

    The pipeline is not a transaction: each SET stands alone and is idempotent.
    """
    pipe = client.pipeline(transaction=False)
    written = 0
    for view, entity_id, tiles in items:
        get_view(view)  # an unknown view is a bug upstream: fail before anything is sent
        pipe.set(feature_key(settings, view, entity_id), encode(tiles), ex=ttl_s)
        written += 1
    if written:
        pipe.execute()
    return written


def read_features(
    client: Redis,
    settings: Settings,
    view: str,
    entity_ids: Sequence[str],
    as_of: float | None = None,
) -> list[FeatureRow]:
    """Features of ``entity_ids`` as of ``as_of`` (default now), in one MGET."""
    spec = get_view(view)
    if not entity_ids:
        return []
    values = client.mget(_keys(settings, view, entity_ids))
    return _rows(spec, entity_ids, values, _as_of(as_of))


async def read_features_async(
    client: AsyncRedis,
    settings: Settings,
    view: str,
    entity_ids: Sequence[str],
    as_of: float | None = None,
) -> list[FeatureRow]:
    """:func:`read_features` for ``redis.asyncio`` clients (the serving API)."""
    spec = get_view(view)
    if not entity_ids:
        return []
    values = await client.mget(_keys(settings, view, entity_ids))
    return _rows(spec, entity_ids, values, _as_of(as_of))


def read_views(
    client: Redis,
    settings: Settings,
    wanted: Sequence[tuple[str, Sequence[str]]],
    as_of: float | None = None,
) -> list[list[FeatureRow]]:
    """Features of several views' entities, ``[(view, ids), ...]``, in one MGET.

    Returns one list of rows per ``(view, ids)`` pair, in the order asked: a
    prediction reads its user and every candidate product in one round trip.
    """
    specs, keys = _view_keys(settings, wanted)
    values = client.mget(keys) if keys else []
    return _view_rows(specs, wanted, values, _as_of(as_of))


async def read_views_async(
    client: AsyncRedis,
    settings: Settings,
    wanted: Sequence[tuple[str, Sequence[str]]],
    as_of: float | None = None,
) -> list[list[FeatureRow]]:
    """:func:`read_views` for ``redis.asyncio`` clients (the serving API)."""
    specs, keys = _view_keys(settings, wanted)
    values = await client.mget(keys) if keys else []
    return _view_rows(specs, wanted, values, _as_of(as_of))


def read_tiles(
    client: Redis, settings: Settings, view: str, entity_ids: Sequence[str]
) -> list[EntityTiles | None]:
    """The stored states themselves (None when missing), e.g. to resume a stream."""
    get_view(view)
    if not entity_ids:
        return []
    values = client.mget(_keys(settings, view, entity_ids))
    return [None if value is None else decode(_as_bytes(value)) for value in values]


def delete_view(client: Redis, settings: Settings, view: str) -> int:
    """Remove every stored entity of ``view`` for this profile; returns how many keys."""
    get_view(view)
    # the prefix is [a-z0-9-]+: and the view a known name, so no glob character needs escaping
    pattern = f"{feature_key(settings, view, '')}*"
    deleted = 0
    batch: list[bytes | str] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) == _DELETE_BATCH:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def _keys(settings: Settings, view: str, entity_ids: Sequence[str]) -> list[str]:
    prefix = feature_key(settings, view, "")
    return [prefix + entity_id for entity_id in entity_ids]


def _view_keys(
    settings: Settings, wanted: Sequence[tuple[str, Sequence[str]]]
) -> tuple[list[FeatureView], list[str]]:
    specs = [get_view(view) for view, _ in wanted]  # unknown views fail before the round trip
    keys: list[str] = []
    for view, entity_ids in wanted:
        keys += _keys(settings, view, entity_ids)
    return specs, keys


def _view_rows(
    specs: list[FeatureView],
    wanted: Sequence[tuple[str, Sequence[str]]],
    values: list[StoredValue],
    as_of: float,
) -> list[list[FeatureRow]]:
    out: list[list[FeatureRow]] = []
    start = 0
    for spec, (_, entity_ids) in zip(specs, wanted, strict=True):
        end = start + len(entity_ids)
        out.append(_rows(spec, entity_ids, values[start:end], as_of))
        start = end
    return out


def _as_of(as_of: float | None) -> float:
    return time.time() if as_of is None else as_of


def _as_bytes(value: bytes | str) -> bytes:
    if isinstance(value, str):
        raise TypeError("the online store needs a Redis client with decode_responses=False")
    return value


def _rows(
    view: FeatureView, entity_ids: Sequence[str], values: list[StoredValue], as_of: float
) -> list[FeatureRow]:
    """Decode MGET's answers: shared by the sync and async readers."""
    rows: list[FeatureRow] = []
    for entity_id, value in zip(entity_ids, values, strict=True):
        if value is None:
            missing = dict.fromkeys(view.names, None)
            rows.append(FeatureRow(view.name, entity_id, False, view.defaults(), missing, as_of))
            continue
        if view.cache_reads:
            features, ages = _STATES.read(view, entity_id, _as_bytes(value), as_of)
        else:
            tiles = decode_frozen(_as_bytes(value))
            features, ages = tiles.features(view, as_of), tiles.ages(view, as_of)
        rows.append(FeatureRow(view.name, entity_id, True, features, ages, as_of))
    return rows
