"""``tributary serve`` as a process: keys, real HTTP, readiness, a flushed log on SIGTERM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from infra.contracts.events import ShopEvent
from infra.contracts.validate import validate
from infra.kafka.reader import read_topic
from infra.plantly.simulator import ShopSimulator, SimulationConfig
from infra.plantly.storefront import ApiStorefront
from infra.settings import Settings
from tests.benchmarks.serving import api_process
from tests.integration.test_serving_api import (
    ADMIN_KEY,
    USERS,
    fresh_profile,
    register_scorer,
    write_features,
)
from tests.local_stack import free_port, settings_env
from tests.scorers import PopularityScorer
from training.registry import Registry

pytestmark = pytest.mark.integration


def test_serve_answers_over_http_and_flushes_its_log_on_sigterm(stack_settings: Settings) -> None:
    settings = fresh_profile(stack_settings, "sp")
    Registry(settings).make_champion(register_scorer(settings, PopularityScorer()))
    write_features(settings, USERS[:5], time.time())
    ids = []
    with api_process(settings, free_port(), api_key=ADMIN_KEY) as url:
        headers = {"X-API-Key": ADMIN_KEY}
        for user in USERS[:5]:
            response = httpx.post(
                f"{url}/v1/recommendations",
                headers=headers,
                json={"user_id": user, "region": "US-OR", "k": 3},
            )
            assert response.status_code == 200, response.text
            ids.append(response.json()["request_id"])
        assert httpx.post(f"{url}/v1/recommendations", json={}).status_code == 401
        shown = simulate_via_api(url)
        ids += sorted({event["request_id"] for event in shown})
        metrics = httpx.get(f"{url}/metrics").text
        answered = 'tributary_serving_requests_total{route="/v1/recommendations",status="200"}'
        assert f"{answered} {float(len(ids))}" in metrics  # the 401 is counted apart
    topic = settings.topic(settings.topics.predictions)
    logged = [json.loads(r.value)["request_id"] for r in read_topic(settings, topic)]
    assert sorted(logged) == sorted(ids)


def simulate_via_api(url: str) -> list[dict[str, str]]:
    """Live traffic whose shop shows the API's picks: the impressions carrying a request_id."""
    front = ApiStorefront(url, ADMIN_KEY)
    try:
        config = SimulationConfig(events=300, seed=8, users=40)
        messages = list(ShopSimulator(config, storefront=front).messages())
    finally:
        front.close()
    assert front.calls > 0 and front.failures == 0
    events = [validate(m.value) for m in messages if m.topic == "events"]
    assert all(isinstance(e, ShopEvent) for e in events)  # request_id is in the contract
    shown = [json.loads(m.value) for m in messages if b'"request_id"' in m.value]
    assert len(shown) >= front.calls and {e["event_type"] for e in shown} == {"impression"}
    return shown


def test_serve_refuses_to_start_without_keys_outside_dev(stack_settings: Settings) -> None:
    env = {**os.environ, **settings_env(stack_settings), "TRIBUTARY_PROFILE": "prod"}
    env.pop("TRIBUTARY_API_KEYS", None)
    done = subprocess.run(
        [sys.executable, "-m", "infra.cli", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: profile 'prod' needs API keys")


def slow_polling_champion(stack_settings: Settings, prefix: str) -> tuple[Settings, int]:
    """A profile with a champion and features whose API polls the registry every 10 minutes.

    Only a webhook (or the workers' control channel) can then explain a swap within seconds.
    """
    base = fresh_profile(stack_settings, prefix)
    settings = base.model_copy(
        update={"serving": base.serving.model_copy(update={"model_poll_s": 600.0})}
    )
    first = register_scorer(settings, PopularityScorer())
    Registry(settings).make_champion(first)
    write_features(settings, USERS[:3], time.time())
    return settings, first


def test_a_new_champion_is_served_at_once_through_the_registry_webhook(
    stack_settings: Settings,
) -> None:
    settings, first = slow_polling_champion(stack_settings, "sw")
    registry = Registry(settings)
    with api_process(settings, free_port(), api_key=ADMIN_KEY) as url:

        def served() -> int:
            answer = httpx.post(
                f"{url}/v1/recommendations", headers={"X-API-Key": ADMIN_KEY},
                json={"user_id": USERS[0], "region": "US-OR", "k": 3},
            )  # fmt: skip
            assert answer.status_code == 200, answer.text
            version: int = answer.json()["model"]["version"]
            return version

        assert served() == first
        second = register_scorer(settings, PopularityScorer(0.5))
        registry.make_champion(second)
        deadline = time.monotonic() + 30
        while served() != second and time.monotonic() < deadline:
            time.sleep(0.2)
        assert served() == second
        forged = httpx.post(f"{url}/v1/hooks/registry", content=b"{}")
        assert forged.status_code == 204  # loopback, nothing to act on: no refresh


def test_two_workers_act_as_one_api(stack_settings: Settings) -> None:
    """``serve --workers 2``: admin changes and promotions reach both; /metrics counts both."""
    settings, _ = slow_polling_champion(stack_settings, "s2")
    registry = Registry(settings)
    headers = {"X-API-Key": ADMIN_KEY}
    with api_process(settings, free_port(), workers=2, api_key=ADMIN_KEY) as url:
        assert {w["canary_fraction"] for w in every_worker(url, headers).values()} == {0.0}
        changed = httpx.put(f"{url}/v1/admin/canary", json={"fraction": 0.5}, headers=headers)
        assert changed.status_code == 200, changed.text
        time.sleep(0.5)  # the other worker hears it over Redis
        assert {w["canary_fraction"] for w in every_worker(url, headers).values()} == {0.5}

        second = register_scorer(settings, PopularityScorer(0.5))
        registry.make_champion(second)  # one webhook delivery, to one of the workers
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            held = {w["champion"]["version"] for w in every_worker(url, headers).values()}
            if held == {second}:
                break
            time.sleep(0.2)
        assert held == {second}

        sent = 30
        for user in USERS[:3] * (sent // 3):
            response = httpx.post(
                f"{url}/v1/recommendations", headers=headers,
                json={"user_id": user, "region": "US-OR", "k": 3},
            )  # fmt: skip
            assert response.status_code == 200, response.text
        metrics = httpx.get(f"{url}/metrics").text
        answered = 'tributary_serving_requests_total{route="/v1/recommendations",status="200"}'
        assert f"{answered} {float(sent)}" in metrics  # both workers' requests, added up
        versions = [
            line for line in metrics.splitlines()
            if line.startswith('tributary_serving_model_version{alias="champion"')
        ]  # fmt: skip
        assert len(versions) == 2 and all(line.endswith(f" {float(second)}") for line in versions)
    hooks = [h for h in registry.client.list_webhooks() if settings.profile in h.name]
    assert len(hooks) == 1  # both workers registered it; the lock let it be created once


def every_worker(url: str, headers: dict[str, str], workers: int = 2) -> dict[str, Any]:
    """``/v1/admin/models`` of each worker, on fresh connections until all answered."""
    seen: dict[str, Any] = {}
    deadline = time.monotonic() + 30
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only {sorted(seen)} answered"
        body = httpx.get(f"{url}/v1/admin/models", headers=headers).json()
        seen[body["worker"]] = body
    return seen
