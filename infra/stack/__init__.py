"""The local stack on loopback: Tansu, Redis, MLflow, and Prometheus with Alertmanager.

``up``/``down``/``status`` live in :mod:`infra.stack.stack`; the generic
process supervision they use lives in :mod:`infra.stack.process`.
"""

from infra.stack.stack import (
    AfterStart,
    PartAction,
    PartStatus,
    StackStatus,
    UpReport,
    down,
    status,
    up,
)

__all__ = [
    "AfterStart",
    "PartAction",
    "PartStatus",
    "StackStatus",
    "UpReport",
    "down",
    "status",
    "up",
]
