"""The online feature store on the real redis-server, and ``tributary features get``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis
import redis.asyncio
import typer
from typer.testing import CliRunner

from flows.features.cli import register
from flows.features.definitions import get_view
from flows.features.online import (
    DEFAULT_TTL_S,
    FeatureRow,
    delete_view,
    feature_key,
    read_features,
    read_features_async,
    write_entities,
)
from flows.features.tiles import EntityTiles
from infra.cli.app import CommandGroups
from infra.cli.errors import CliError
from infra.redis_client import async_redis
from infra.settings import Settings

pytestmark = pytest.mark.integration

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
AS_OF = T0 + 5 * 3600 + 50 * 60  # the 1 h window: minutes 4:51 to 5:50


class CountingConnection(redis.Connection):
    """Counts what goes on the wire: one packed send is one round trip."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def profile_settings(stack_settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The session stack under a profile of this test's own, so its keys start absent."""
    profile = "f" + str(abs(hash(request.node.nodeid)) % 10**8)
    return stack_settings.model_copy(update={"profile": profile})


@pytest.fixture
def client(stack_settings: Settings) -> Iterator[redis.Redis]:
    address = stack_settings.redis_address
    pool = redis.ConnectionPool(
        connection_class=CountingConnection, host=address.host, port=address.port
    )
    connection = redis.Redis(connection_pool=pool)
    connection.ping()  # the handshake is out of the way before anything is counted
    yield connection
    connection.close()
    pool.disconnect()


def user_tiles(index: int) -> EntityTiles:
    """A different, hand-checkable history per user: index impressions, a click per 3."""
    tiles = EntityTiles()
    for n in range(index):
        tiles.add("impression", T0 + 5 * 3600 + 30 * n)
    for n in range(index // 3):
        tiles.add("click", T0 + 5 * 3600 + 40 * n)
    if index % 7 == 0:
        tiles.add("purchase", T0 + 60.0, price=19.99, quantity=index % 3 + 1)
    return tiles


def write_users(client: redis.Redis, settings: Settings, count: int) -> dict[str, EntityTiles]:
    states = {f"u-{i}": user_tiles(i) for i in range(1, count + 1)}
    write_entities(client, settings, [("user", uid, tiles) for uid, tiles in states.items()])
    return states


def test_write_then_read_in_one_round_trip_each(
    client: redis.Redis, profile_settings: Settings
) -> None:
    before = CountingConnection.sends
    states = write_users(client, profile_settings, 100)
    assert CountingConnection.sends - before == 1

    ids = [*states, "u-missing", "u-404"]
    before = CountingConnection.sends
    rows = read_features(client, profile_settings, "user", ids, as_of=AS_OF)
    assert CountingConnection.sends - before == 1

    assert [r.entity_id for r in rows] == ids
    for row in rows[:100]:
        tiles = states[row.entity_id]
        assert row.found and row.view == "user" and row.as_of == AS_OF
        assert row.features == tiles.features("user", AS_OF)
        assert row.ages == tiles.ages("user", AS_OF)
    u21 = rows[20].features
    assert (u21["impressions_1h"], u21["ctr_7d"], u21["purchases_30d"]) == (21, 7 / 21, 1)
    assert u21["spend_30d"] == 19.99
    for row in rows[100:]:
        assert not row.found
        assert row.features == get_view("user").defaults()
        assert row.ages == dict.fromkeys(get_view("user").names)
    ttl = client.ttl(feature_key(profile_settings, "user", "u-1"))
    assert DEFAULT_TTL_S - 5 <= ttl <= DEFAULT_TTL_S


def test_writes_are_idempotent_and_absolute(
    client: redis.Redis, profile_settings: Settings
) -> None:
    states = write_users(client, profile_settings, 5)
    write_users(client, profile_settings, 5)  # a replay writes the same values again
    rows = read_features(client, profile_settings, "user", list(states), as_of=AS_OF)
    assert [r.features for r in rows] == [t.features("user", AS_OF) for t in states.values()]
    assert write_entities(client, profile_settings, []) == 0


@pytest.mark.parametrize("packing", ["redis-py", "hiredis"])
def test_async_read_equals_sync_read(
    client: redis.Redis, profile_settings: Settings, packing: str
) -> None:
    states = write_users(client, profile_settings, 30)
    tiles = EntityTiles()
    tiles.add("click", AS_OF - 60.0)
    write_entities(client, profile_settings, [("user", "u-ünï-🌱", tiles)])
    ids = [*states, "u-missing", "u-ünï-🌱"]
    url = profile_settings.redis_url

    async def read_async() -> list[FeatureRow]:
        # serving's client (infra.redis_client) packs commands with hiredis
        async_client = (
            redis.asyncio.Redis.from_url(url) if packing == "redis-py" else async_redis(url)
        )
        try:
            assert await async_client.execute_command("CLIENT SETNAME", "t") is True
            return await read_features_async(async_client, profile_settings, "user", ids, AS_OF)
        finally:
            await async_client.aclose()

    rows = asyncio.run(read_async())
    assert rows == read_features(client, profile_settings, "user", ids, AS_OF)
    assert rows[-1].found and rows[-1].features["clicks_1h"] == 1


def test_profiles_do_not_see_each_others_keys(
    client: redis.Redis, profile_settings: Settings
) -> None:
    other = profile_settings.model_copy(update={"profile": profile_settings.profile + "-b"})
    write_users(client, profile_settings, 10)
    assert not any(r.found for r in read_features(client, other, "user", ["u-1", "u-2"]))
    assert delete_view(client, other, "user") == 0
    tiles = user_tiles(3)
    write_entities(client, profile_settings, [("product", "p-1", tiles)])
    assert delete_view(client, profile_settings, "user") == 10
    remaining = read_features(client, profile_settings, "user", ["u-1", "u-10"])
    assert not any(row.found for row in remaining)
    assert read_features(client, profile_settings, "product", ["p-1"])[0].found


@pytest.fixture
def cli(profile_settings: Settings) -> tuple[typer.Typer, dict[str, str]]:
    groups = CommandGroups(root=typer.Typer(), run=typer.Typer())
    register(groups)
    env = {
        "TRIBUTARY_PROFILE": profile_settings.profile,
        "TRIBUTARY_REDIS_URL": profile_settings.redis_url,
        "TRIBUTARY_CONFIG": "/nonexistent/tributary.toml",
    }
    return groups.root, env


def test_features_get_prints_json_and_a_table(
    client: redis.Redis, profile_settings: Settings, cli: tuple[typer.Typer, dict[str, str]]
) -> None:
    app, env = cli
    states = write_users(client, profile_settings, 21)
    as_of = datetime.fromtimestamp(AS_OF, UTC).isoformat()
    result = CliRunner().invoke(
        app, ["features", "get", "user", "u-21", "--json", "--as-of", as_of], env=env
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document == {
        "view": "user",
        "entity_id": "u-21",
        "found": True,
        "features": states["u-21"].features("user", AS_OF),
        "ages": states["u-21"].ages("user", AS_OF),
        "as_of": "2026-01-01T05:50:00.000Z",
    }
    table = CliRunner().invoke(app, ["features", "get", "user", "u-21"], env=env)
    assert table.exit_code == 0, table.output
    assert "impressions_1h" in table.stdout and "last_event_ts" in table.stdout


def test_features_get_fails_for_missing_entities_and_unknown_views(
    cli: tuple[typer.Typer, dict[str, str]],
) -> None:
    app, env = cli
    result = CliRunner().invoke(app, ["features", "get", "product", "p-nope", "--json"], env=env)
    assert result.exit_code == 1
    document = json.loads(result.stdout)
    assert document["found"] is False and document["features"] == get_view("product").defaults()
    assert set(document) == {"view", "entity_id", "found", "features", "as_of"}

    missing = CliRunner().invoke(app, ["features", "get", "product", "p-nope"], env=env)
    assert isinstance(missing.exception, CliError) and missing.exit_code == 1
    assert "no online features for product 'p-nope'" in str(missing.exception)

    unknown = CliRunner().invoke(app, ["features", "get", "basket", "b-1"], env=env)
    assert isinstance(unknown.exception, CliError)
    assert str(unknown.exception) == "unknown feature view 'basket'; choose one of: product, user"
