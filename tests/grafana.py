"""Reading ``monitoring/grafana/tributary.json``: its panels' queries, ready for Prometheus.

Grafana fills in variables before it sends a query; :func:`runnable` does the
same for the ones the dashboard uses, so a test can send every panel's
expression to a real Prometheus.

>>> runnable('rate(x{model_version=~"$model_version"}[$__rate_interval])')
'rate(x{model_version=~"1"}[15s])'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

DASHBOARD: Final = (
    Path(__file__).resolve().parent.parent / "monitoring" / "grafana" / "tributary.json"
)
# what Grafana would send: one version selected, rate windows of 4 scrapes at most 15 s
VARIABLES: Final = {
    "$__rate_interval": "15s",
    "$__interval": "15s",
    "$__range": "1h",
    "$model_version": "1",
}


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that queries (rows only group them), nested ones included."""
    found = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            found += panel.get("panels", [])
        else:
            found.append(panel)
    return found


def runnable(expr: str) -> str:
    """``expr`` with the dashboard's variables replaced as Grafana would."""
    for name in sorted(VARIABLES, key=len, reverse=True):  # $__range before $__r...
        expr = expr.replace(name, VARIABLES[name])
    return expr
