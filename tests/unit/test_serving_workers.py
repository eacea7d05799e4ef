"""Several workers of one API: an admin change or a registry delivery reaches all of them.

Each ``TestClient`` is one worker (its own lifespan, thread and event loop);
they share the registry and a :class:`serving.testing.ControlHub` standing in
for the Redis channel. ``tests/integration/test_serving_process.py`` runs the
same story with ``tributary serve --workers 2`` against real Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from fastapi.testclient import TestClient

from infra.settings import Settings
from serving.app import create_app
from serving.control import ControlMessage
from serving.testing import ControlHub, FakeRedis, FakeSource, ListSink, fake_backends
from tests.unit.test_serving_api import ADMIN, KEYS, assert_error, recommend

SETTINGS = Settings(profile="t1", api_keys=KEYS)


class Workers:
    """Apps over one registry and one control hub, started on demand."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self.source = FakeSource({1: 0.1, 2: 0.3}, champion=1)
        self.hub = ControlHub()

    def start(self, settings: Settings = SETTINGS) -> TestClient:
        backends = fake_backends(self.source, FakeRedis(), ListSink(), hub=self.hub)
        client = TestClient(create_app(settings, backends=backends))
        return self.stack.enter_context(client)


@pytest.fixture
def workers() -> Iterator[Workers]:
    with ExitStack() as stack:
        yield Workers(stack)


def eventually(check: Callable[[], Any], timeout: float = 5.0) -> None:
    """The other worker applies a message on its own loop: wait for it, briefly."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "the change did not reach the other worker"
        time.sleep(0.02)


def canary_of(client: TestClient) -> float:
    fraction: float = client.get("/v1/admin/models", headers=ADMIN).json()["canary_fraction"]
    return fraction


def test_a_canary_change_reaches_every_worker(workers: Workers) -> None:
    first, second = workers.start(), workers.start()
    workers.source.aliases["challenger"] = 2
    for client in (first, second):
        client.post("/v1/admin/reload", headers=ADMIN)
    changed = first.put("/v1/admin/canary", json={"fraction": 1.0, "shadow": True}, headers=ADMIN)
    assert changed.status_code == 200
    eventually(lambda: canary_of(second) == 1.0)
    assert recommend(second).json()["model"]["version"] == 2
    assert second.get("/v1/admin/models", headers=ADMIN).json()["shadow"] is True
    assert [m.op for m in workers.hub.published].count("routing") == 1


def test_a_reload_in_one_worker_reloads_the_others(workers: Workers) -> None:
    first, second = workers.start(), workers.start()
    assert recommend(second).json()["model"]["version"] == 1
    workers.source.aliases["champion"] = 2
    assert first.post("/v1/admin/reload", headers=ADMIN).status_code == 200
    eventually(lambda: recommend(second).json()["model"]["version"] == 2)


def test_a_worker_started_later_routes_like_the_others(workers: Workers) -> None:
    first = workers.start()
    first.put("/v1/admin/canary", json={"fraction": 0.25}, headers=ADMIN)
    assert canary_of(workers.start()) == 0.25
    # a new configuration wins over what the admin API set under the old one
    reconfigured = SETTINGS.model_copy(
        update={"serving": SETTINGS.serving.model_copy(update={"canary_fraction": 0.5})}
    )
    assert canary_of(workers.start(reconfigured)) == 0.5


def test_a_worker_ignores_its_own_messages(workers: Workers) -> None:
    only = workers.start()
    polls = 'tributary_serving_model_refresh_total{outcome="ok"}'
    assert f"{polls} 1.0" in only.get("/metrics").text  # the first load
    only.post("/v1/admin/reload", headers=ADMIN)
    time.sleep(0.2)  # time enough for a second, self-inflicted refresh to show
    assert f"{polls} 2.0" in only.get("/metrics").text
    assert [m.op for m in workers.hub.published] == ["reload"]


class BrokenControl:
    """A channel whose Redis is down."""

    async def publish(self, message: ControlMessage) -> None:
        raise ConnectionError("redis is down")

    async def store_routing(self, routing: object) -> None:
        raise ConnectionError("redis is down")


def test_a_change_that_cannot_reach_the_others_is_a_503_yet_holds_here(
    workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = workers.start()
    state = client.app.state.serving  # type: ignore[attr-defined]
    broken = BrokenControl()
    monkeypatch.setattr(state.backends.control, "publish", broken.publish)
    monkeypatch.setattr(state.backends.control, "store_routing", broken.store_routing)
    response = client.put("/v1/admin/canary", json={"fraction": 0.3}, headers=ADMIN)
    assert_error(response, 503, "control_unavailable")
    assert "this worker only" in response.json()["error"]["message"]
    assert canary_of(client) == 0.3
    assert_error(client.post("/v1/admin/reload", headers=ADMIN), 503, "control_unavailable")
