"""Stacks on free loopback ports in a folder of their own, for tests and benchmarks."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.cli.stack import write_catalog
from infra.settings import Settings
from infra.stack import down, up


def free_port() -> int:
    """A port nothing listens on right now (the kernel's pick for port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive free ports, below the kernel's ephemeral range.

    A flow process ``i`` serves metrics on ``base + i``: the ports above a port
    the kernel picked are ephemeral too, and an outgoing connection (a test's
    own Kafka or Redis client) may hold one of them; below 32768 none does.
    """
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(20_000, 32_000 - count)
        if all(_bindable(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def settings_for(state_dir: Path) -> Settings:
    """Settings whose every part listens on its own free loopback port."""
    return Settings(
        state_dir=state_dir,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        mlflow_uri=f"http://127.0.0.1:{free_port()}",
        prometheus_port=free_port(),
        alertmanager_port=free_port(),
    )


def monitoring_settings_for(state_dir: Path) -> Settings:
    """:func:`settings_for`, plus free ports for the API and the retrain webhook.

    Prometheus scrapes the API's port and Alertmanager calls the webhook's, so a
    stack with monitoring must not point them at the defaults another stack uses.
    """
    settings = settings_for(state_dir)
    training = settings.training.model_copy(update={"webhook_port": free_port()})
    return settings.model_copy(update={"api_port": free_port(), "training": training})


@contextmanager
def running_stack(
    state_dir: Path, *, monitoring: bool = False, settings: Settings | None = None
) -> Iterator[Settings]:
    """Up (with the catalog table) on entry, down on exit.

    Without Prometheus and Alertmanager unless ``monitoring``: most tests only
    move data, and a Prometheus shared by a session's tests would scrape (and
    alert on) every flow any of them announced.
    """
    if settings is None:
        settings = monitoring_settings_for(state_dir) if monitoring else settings_for(state_dir)
    up(settings, monitoring=monitoring, after_start=[write_catalog])
    try:
        yield settings
    finally:
        down(settings)


def settings_env(settings: Settings) -> dict[str, str]:
    """The ``TRIBUTARY_*`` variables that make ``Settings()`` in another process equal these."""
    env = {
        "TRIBUTARY_PROFILE": settings.profile,
        "TRIBUTARY_STATE_DIR": str(settings.state_dir),
        "TRIBUTARY_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "TRIBUTARY_REDIS_URL": settings.redis_url,
        "TRIBUTARY_MLFLOW_URI": settings.mlflow_uri,
        "TRIBUTARY_METRICS_PORT": str(settings.metrics_port),
    }
    if settings.lake_root is not None:
        env["TRIBUTARY_LAKE_ROOT"] = settings.lake_root
    # nested groups travel whole, as JSON
    env["TRIBUTARY_TRAINING"] = settings.training.model_dump_json()
    env["TRIBUTARY_SERVING"] = settings.serving.model_dump_json()
    env["TRIBUTARY_MONITORING"] = settings.monitoring.model_dump_json()
    env["TRIBUTARY_PROMETHEUS_PORT"] = str(settings.prometheus_port)
    env["TRIBUTARY_ALERTMANAGER_PORT"] = str(settings.alertmanager_port)
    env["TRIBUTARY_API_PORT"] = str(settings.api_port)
    return env
