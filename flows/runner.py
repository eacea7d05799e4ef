"""Run a dataflow the way ``python -m bytewax.run`` would, with the project's settings.

Scale out with processes, not threads: Bytewax workers in one process share
the GIL (Bytewax issue #405; measured here, two threads ran a keyed flow at
90k/s against 144k/s for one). ``--processes P`` on one machine starts P
cooperating processes on loopback; across machines every machine runs one
process of the cluster with the same ``--addresses`` and its own
``--process-id``.

Recovery is on by default: state and Kafka offsets are snapshotted every
``snapshot_interval`` seconds into ``{state_dir}/recovery/{profile}/{flow}``, so a
flow killed at any moment resumes where its last snapshot ended, and the
idempotent sinks absorb the replay.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from importlib import import_module
from pathlib import Path

from infra.errors import ConfigError
from infra.settings import Settings
from infra.stack.parts import scrape_targets_dir

FLOW_FACTORIES = {
    "ingest": "flows.ingest:build_flow",
    "features": "flows.feature_flow:build_flow",
}
# Packages above flows (training, serving, monitoring) add their dataflows here, so
# the runner can start them without importing upward.
FLOW_ENTRY_POINT_GROUP = "tributary.flows"
# Each flow serves Prometheus metrics on settings.metrics_port + offset + process index.
METRICS_OFFSETS = {"ingest": 0, "features": 10, "learner": 20, "scorer": 30, "monitor": 40}
_OTHER_FLOWS_OFFSET = 50


def flow_factories() -> dict[str, str]:
    """Every known flow name and its ``module:build_flow`` factory."""
    from importlib.metadata import entry_points

    found = {entry.name: entry.value for entry in entry_points(group=FLOW_ENTRY_POINT_GROUP)}
    return {**found, **FLOW_FACTORIES}


@dataclass(frozen=True)
class RunPlan:
    """Everything one process of a flow needs to start."""

    flow: str
    workers: int = 1
    processes: int = 1
    process_id: int | None = None
    addresses: tuple[str, ...] = ()
    recovery: bool = True
    snapshot_interval_s: float = 5.0
    tail: bool = True

    def __post_init__(self) -> None:
        known = flow_factories()
        if self.flow not in known:
            raise ConfigError(f"unknown flow {self.flow!r}; choose from {sorted(known)}")
        if self.workers < 1 or self.processes < 1:
            raise ConfigError("--workers and --processes must be at least 1")
        if self.process_id is not None and len(self.addresses) != self.processes:
            raise ConfigError("--process-id needs --addresses with one host:port per process")

    @property
    def total_workers(self) -> int:
        return self.workers * self.processes


def recovery_dir(settings: Settings, flow: str) -> Path:
    return settings.state_dir / "recovery" / settings.profile / flow


def ensure_recovery_store(settings: Settings, plan: RunPlan) -> Path:
    """Create the recovery partitions once; later runs resume from them."""
    folder = recovery_dir(settings, plan.flow)
    if not any(folder.glob("part-*.sqlite3")):
        folder.mkdir(parents=True, exist_ok=True)
        from bytewax.recovery import init_db_dir

        init_db_dir(folder, plan.total_workers)
    return folder


def discard_uncommitted_snapshots(folder: Path) -> int:
    """Delete the snapshots of epochs the store never committed; returns how many.

    Bytewax 0.21 resumes at the oldest frontier of the latest execution and loads,
    per state key, the newest snapshot *before* that epoch, but it keeps what a
    killed execution wrote for later epochs. The next execution runs those epoch
    numbers again and overwrites only the keys it snapshots in them (a source
    partition every epoch, a stateful key or sink partition only when it got
    items), so once they commit, a later resume mixes the dead execution's shard
    state with another's Kafka offsets: events counted twice (or lost).

    Call it before any process of the flow starts, never while one runs.
    """
    import sqlite3
    from contextlib import closing

    parts = sorted(folder.glob("part-*.sqlite3"))
    executions: list[tuple[int, int, int]] = []
    for path in parts:
        with closing(sqlite3.connect(path)) as db:
            executions += db.execute("SELECT ex_num, worker_count, resume_epoch FROM exs")
    if not executions:
        return 0
    ex_num, worker_count, resume_epoch = max(executions)
    # as Bytewax computes it: each worker's frontier (the execution's start if it
    # wrote none), the oldest of them
    frontiers = dict.fromkeys(range(worker_count), resume_epoch)
    for path in parts:
        with closing(sqlite3.connect(path)) as db:
            query = "SELECT worker_index, worker_frontier FROM fronts WHERE ex_num = ?"
            for worker, frontier in db.execute(query, (ex_num,)):
                frontiers[worker] = max(frontiers.get(worker, resume_epoch), frontier)
    resume = min(frontiers.values())
    deleted = 0
    for path in parts:
        with closing(sqlite3.connect(path)) as db, db:
            deleted += db.execute("DELETE FROM snaps WHERE snap_epoch >= ?", (resume,)).rowcount
    return deleted


def announce_metrics(settings: Settings, name: str, port: int) -> Path:
    """Tell the stack's Prometheus (``tributary up``) where to scrape this process."""
    folder = scrape_targets_dir(settings)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{settings.profile}-{name}.json"
    labels = {"profile": settings.profile, "process": name}
    path.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"], "labels": labels}]))
    return path


def load_factory(flow: str) -> Callable[..., object]:
    module, _, name = flow_factories()[flow].partition(":")
    factory: Callable[..., object] = getattr(import_module(module), name)
    return factory


def run_process(settings: Settings, plan: RunPlan) -> None:
    """Run this process's share of the flow, in the foreground, until it ends."""
    from bytewax._bytewax import cli_main
    from bytewax.recovery import RecoveryConfig

    from flows.metrics import serve_metrics

    process_index = plan.process_id or 0
    if settings.metrics_port:
        offset = METRICS_OFFSETS.get(plan.flow, _OTHER_FLOWS_OFFSET)
        port = settings.metrics_port + offset + process_index
        serve_metrics(port)
        announce_metrics(settings, f"{plan.flow}-{process_index}", port)
    flow = load_factory(plan.flow)(settings, tail=plan.tail)
    recovery = None
    if plan.recovery:
        folder = ensure_recovery_store(settings, plan)
        if plan.process_id is None:  # a cluster's processes: run_local_cluster did it
            discard_uncommitted_snapshots(folder)
        recovery = RecoveryConfig(str(folder))
    cli_main(
        flow,
        workers_per_process=plan.workers,
        process_id=plan.process_id,
        addresses=list(plan.addresses) or None,
        epoch_interval=timedelta(seconds=plan.snapshot_interval_s),
        recovery_config=recovery,
    )


def loopback_addresses(count: int) -> tuple[str, ...]:
    import socket

    ports = []
    for _ in range(count):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    return tuple(f"127.0.0.1:{port}" for port in ports)


def run_local_cluster(settings: Settings, plan: RunPlan, argv: Sequence[str]) -> int:
    """Start ``plan.processes`` processes on loopback; stop all when one fails.

    ``argv`` is the command that runs one process; ``--process-id`` and
    ``--addresses`` are appended for each.
    """
    if plan.recovery:
        # once, before the processes race for it
        discard_uncommitted_snapshots(ensure_recovery_store(settings, plan))
    addresses = loopback_addresses(plan.processes)
    children = [
        subprocess.Popen(
            [*argv, "--process-id", str(index), "--addresses", ";".join(addresses)],
            start_new_session=True,
        )
        for index in range(plan.processes)
    ]
    try:
        return _wait_all(children)
    finally:
        for child in children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            child.wait()


def _wait_all(children: list[subprocess.Popen[bytes]]) -> int:
    """Exit code of the cluster: the first failure, or 0 when every process ends well."""
    pending = list(children)
    while pending:
        pid, status = os.wait()
        code = os.waitstatus_to_exitcode(status)
        for child in pending:
            if child.pid == pid:
                child.returncode = code
                pending.remove(child)
                break
        if code != 0:
            return code
    return 0


def self_command(flow: str, options: Sequence[str]) -> list[str]:
    """The command line that runs one process of ``flow`` with ``options``."""
    return [sys.executable, "-m", "infra.cli", "run", flow, *options]
