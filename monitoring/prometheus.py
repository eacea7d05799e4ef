"""A small client of Prometheus's HTTP API: instant queries and the alerts it holds.

>>> Prometheus("127.0.0.1:1", timeout=0.2).reachable()
False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from infra.errors import StackError
from infra.settings import Settings

Sample = tuple[dict[str, str], float]


@dataclass(frozen=True)
class Prometheus:
    """Prometheus at ``address`` (``host:port``)."""

    address: str
    timeout: float = 5.0

    @classmethod
    def of(cls, settings: Settings) -> Prometheus:
        return cls(str(settings.prometheus_address))

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        url = f"http://{self.address}{path}"
        try:
            response = httpx.get(url, params=params, timeout=self.timeout)
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise StackError(
                f"prometheus at {self.address} did not answer {path}: {error}; "
                "is `tributary up` running?"
            ) from error
        return response.json()["data"]

    def reachable(self) -> bool:
        try:
            self._get("/api/v1/status/buildinfo")
        except StackError:
            return False
        return True

    def query(self, expr: str) -> list[Sample]:
        """An instant vector query: ``(labels, value)`` per series."""
        data = self._get("/api/v1/query", {"query": expr})
        return [(item["metric"], float(item["value"][1])) for item in data.get("result", [])]

    def alerts(self) -> list[dict[str, Any]]:
        """Pending and firing alerts, as Prometheus reports them."""
        alerts: list[dict[str, Any]] = self._get("/api/v1/alerts").get("alerts", [])
        return alerts
