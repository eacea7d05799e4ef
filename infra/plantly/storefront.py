"""What the shop shows a shopper: its own picks, or what the prediction API ranks.

By default the simulator's shop chooses the plants it displays itself (mostly
popular ones, some from the shopper's favourite categories). With
:class:`ApiStorefront` it asks the running prediction API instead, over HTTP —
``infra`` never imports the serving code — and every impression of a returned
plant carries the ``request_id`` of the answer that chose it, which closes the
loop from prediction to outcome. A failed call falls back to the shop's own
picks (counted in :attr:`ApiStorefront.failures`), as a real shop would.

>>> front = ApiStorefront("http://127.0.0.1:1", timeout=0.2)
>>> front.show("u-1", "US-CA", "mobile", 5), front.failures
([], 1)
>>> front.close()
"""

from __future__ import annotations

import logging
from typing import Protocol

import httpx

_LOG = logging.getLogger("infra.plantly.storefront")
API_KEY_HEADER = "X-API-Key"


class Storefront(Protocol):
    """Chooses the plants a shopper sees: ``(product_id, request_id)`` pairs, best first."""

    def show(self, user_id: str, region: str, device: str, count: int) -> list[tuple[str, str]]: ...


class ApiStorefront:
    """``POST /v1/recommendations`` of a prediction API for each shopping session."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {} if api_key is None else {API_KEY_HEADER: api_key}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)
        self.calls = 0
        self.failures = 0

    def show(self, user_id: str, region: str, device: str, count: int) -> list[tuple[str, str]]:
        """The API's top ``count`` for the shopper; [] when the API did not answer."""
        self.calls += 1
        body = {"user_id": user_id, "region": region, "device": device, "k": count}
        try:
            response = self.client.post("/v1/recommendations", json=body)
            response.raise_for_status()
            answer = response.json()
            request_id = str(answer["request_id"])
            return [(str(item["product_id"]), request_id) for item in answer["items"]]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as error:
            self.failures += 1
            if self.failures == 1:  # once: a dead API would otherwise flood the log
                _LOG.warning("the prediction API did not answer (%s); the shop picks", error)
            return []

    def close(self) -> None:
        self.client.close()
