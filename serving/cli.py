"""``tributary serve``: the prediction API under uvicorn, in the foreground.

One worker by default: lowest latency, least memory. ``--workers N`` runs N
processes on one port for throughput (one per core measured best, see the
README's serving benchmark); they act as one API: admin changes and registry
deliveries reach every worker (:mod:`serving.control`), and ``/metrics`` adds
up all of them (prometheus_client's multiprocess mode, in a temporary folder
unless ``PROMETHEUS_MULTIPROC_DIR`` names one). Heavy imports happen inside
the command.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from infra.cli.app import CommandGroups
from infra.settings import Settings


def register(groups: CommandGroups) -> None:
    """Add the serving commands to the CLI."""
    groups.root.command("serve")(serve)


def serve(
    port: int | None = typer.Option(
        None, "--port", min=1, max=65535, help="Port; default TRIBUTARY_API_PORT (8000)."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (loopback unless you say otherwise)."
    ),
    workers: int = typer.Option(1, "--workers", min=1, max=64, help="uvicorn worker processes."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn's log level."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request."),
) -> None:
    """Serve /v1/recommendations, /v1/predict, /v1/features, /readyz and /metrics."""
    from infra.settings import load_settings
    from serving.security import ApiKeys

    settings = load_settings()
    ApiKeys.from_settings(settings)  # refuse to start without keys outside dev, before binding
    # One intra-op thread for torch/numpy: 50-row batches gain nothing from more, and spare
    # threads spin against the event loop on a small machine. Set the variable to override.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # where MLflow calls back on alias changes (each worker reads it from the environment)
    callback_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    os.environ.setdefault(
        "TRIBUTARY_SERVING__WEBHOOK_URL",
        f"http://{callback_host}:{port or settings.api_port}/v1/hooks/registry",
    )
    with _shared_metrics(workers), _announced(settings, port or settings.api_port):
        _run(host, port or settings.api_port, workers, log_level, access_log)


@contextmanager
def _announced(settings: Settings, port: int) -> Iterator[None]:
    """Prometheus scrapes the API (job ``tributary-api``) while it runs, not after."""
    from flows.runner import announce_metrics

    path = announce_metrics(settings, "api-0", port)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _run(host: str, port: int, workers: int, log_level: str, access_log: bool) -> None:
    import uvicorn

    uvicorn.run(
        "serving.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=10,
    )


@contextmanager
def _shared_metrics(workers: int) -> Iterator[None]:
    """Workers write their metrics where ``/metrics`` adds them up; removed at exit."""
    from serving.metrics import MULTIPROCESS_ENV

    if workers == 1 or os.environ.get(MULTIPROCESS_ENV):
        yield
        return
    # in memory where Linux offers it: every metric update writes to an mmap'd file,
    # and on tmpfs those pages are never written back to a disk
    shm = Path("/dev/shm")
    in_memory = shm.is_dir() and os.access(shm, os.W_OK)
    folder = tempfile.mkdtemp(prefix="tributary-metrics-", dir=shm if in_memory else None)
    os.environ[MULTIPROCESS_ENV] = folder
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)
