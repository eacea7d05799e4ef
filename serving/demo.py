"""The serving chapter of ``tributary demo``: the API answers, the shop closes the loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
from rich.console import Console

from infra.kafka.reader import end_offsets
from infra.plantly.simulator import ShopSimulator, SimulationConfig
from infra.plantly.storefront import ApiStorefront
from infra.plantly.traffic import KafkaSink
from infra.settings import Settings


def serving(settings: Settings, console: Console) -> None:
    """Start ``tributary serve``, ask for recommendations, let the shop show them."""
    url = f"http://127.0.0.1:{settings.api_port}"
    console.print(f"tributary serve --port {settings.api_port}")
    server = subprocess.Popen(
        [sys.executable, "-m", "infra.cli", "serve", "--port", str(settings.api_port)],
        env=os.environ.copy(),
    )
    try:
        wait_ready(url, server)
        _ask(url, console)
        _close_the_loop(settings, url, console)
    finally:
        server.terminate()
        server.wait(30)


def wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    """Block until ``tributary serve`` at ``url`` answers ``/readyz`` with 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"tributary serve exited with {server.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url}/readyz did not answer 200 within {timeout:.0f} s")


def _ask(url: str, console: Console) -> None:
    body = {"user_id": "u-000042", "region": "US-FL", "device": "mobile", "k": 5}
    console.print(f"curl -X POST {url}/v1/recommendations -d '{json.dumps(body)}'")
    started = time.perf_counter()
    answer = httpx.post(f"{url}/v1/recommendations", json=body, timeout=5.0).json()
    elapsed = (time.perf_counter() - started) * 1000
    console.print_json(data={k: answer[k] for k in ("request_id", "model", "items")})
    console.print(f"  answered in {elapsed:.1f} ms; no plant invasive in US-FL is offered there")


def _close_the_loop(settings: Settings, url: str, console: Console) -> None:
    before = sum(end_offsets(settings, settings.topic(settings.topics.predictions)).values())
    console.print(f"tributary simulate --events 2000 --via-api {url}")
    storefront = ApiStorefront(url)
    sink = KafkaSink(settings)
    try:
        for message in ShopSimulator(SimulationConfig(events=2_000, seed=7),
                                     storefront=storefront).messages():  # fmt: skip
            sink.write(message)
    finally:
        sink.close()
        storefront.close()
    time.sleep(1.0)  # the log trails the answers by a few milliseconds; let it land
    after = sum(end_offsets(settings, settings.topic(settings.topics.predictions)).values())
    console.print(
        f"  the shop asked the API {storefront.calls} times; impressions carry each "
        f"request_id; ml.predictions grew by {after - before} records"
    )
