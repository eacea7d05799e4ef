"""Commands of the training package: ``train``, ``promote``, ``rollback``, ``run retrainer``.

Registered under the ``tributary.cli`` entry-point group; MLflow, torch and
River are imported inside the commands, so ``tributary --help`` stays fast.
"""

from __future__ import annotations

import json
import signal
import threading
from datetime import UTC, datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from infra.cli.app import CommandGroups
from infra.cli.errors import CliError
from infra.settings import load_settings


def register(groups: CommandGroups) -> None:
    groups.root.command("train")(train_command)
    groups.root.command("promote")(promote_command)
    groups.root.command("rollback")(rollback_command)
    groups.run.command("retrainer")(retrainer_command)


def train_command(
    kind: str = typer.Option(..., "--kind", help="river or torch."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda (torch only)."),
    start: str | None = typer.Option(None, "--from", help="Window start, e.g. 2026-11-01."),
    end: str | None = typer.Option(None, "--to", help="Window end (exclusive)."),
    days: float | None = typer.Option(
        None, "--days", min=0.01, max=30, help="Window length ending at --to or the newest event."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed; CPU runs are deterministic with it."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Most epochs (torch)."),
    threads: int = typer.Option(
        1, "--threads", min=1, help="CPU threads for torch (one is fastest for this model)."
    ),
    challenger: bool = typer.Option(
        False, "--challenger", help="Also set the challenger alias (triggers the gates)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Train a model version on a point-in-time set from Delta and register it."""
    if kind not in ("river", "torch"):
        raise CliError(f"--kind must be river or torch, not {kind!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise CliError(f"--device must be auto, cpu or cuda, not {device!r}")
    window = (_moment(start, "--from"), _moment(end, "--to"))
    from training.train import TrainRequest, train

    request = TrainRequest(
        kind=kind, device=device, start=window[0], end=window[1],  # type: ignore[arg-type]
        window_days=days, seed=seed, max_epochs=epochs, cpu_threads=threads,
        challenger=challenger,
        progress=not as_json,
    )  # fmt: skip
    report = train(load_settings(), request)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    console = Console()
    console.print(
        f"registered version {report.version} ({report.kind} on {report.device}): "
        f"validation AUC {report.valid_auc:.4f}, log loss {report.valid_log_loss:.4f}, "
        f"{report.train_rows} train / {report.validation_rows} validation rows, "
        f"label rate {report.label_rate:.2%}, Delta {report.delta_versions}, {report.seconds} s"
    )


def promote_command(
    version: int = typer.Option(..., "--version", min=1, help="The version to promote."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Run the gates, move nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the gate report as JSON."),
) -> None:
    """Run the promotion gates; only if all pass, make the version champion."""
    from training.promotion import GateFailedError, evaluate, promote

    settings = load_settings()
    try:
        report = evaluate(settings, version) if dry_run else promote(settings, version)
    except GateFailedError as failure:
        print_gates(failure.report.to_dict(), as_json)
        raise CliError(str(failure)) from failure
    print_gates(report.to_dict(), as_json)


def rollback_command(
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Point champion back at the previous champion."""
    from training.registry import Registry

    was, now = Registry(load_settings()).rollback()
    if as_json:
        typer.echo(json.dumps({"from_version": was, "to_version": now}))
    else:
        typer.echo(f"champion: version {was} -> version {now}")


def retrainer_command(
    webhook_port: int | None = typer.Option(
        None, "--webhook-port", min=0, max=65535, help="Where MLflow's webhook calls (0: any)."
    ),
) -> None:
    """Consume ml.retrain and challenger webhooks: retrain, gate, promote; one at a time."""
    import logging

    from training.retrainer import run_worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run_worker(load_settings(), stop, webhook_port)


def _moment(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise CliError(f"{option} must be a date or time like 2026-11-01: {error}") from error
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def print_gates(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report))
        return
    table = Table(title=f"promotion gates, version {report['version']}")
    for column in ("gate", "result", "detail"):
        table.add_column(column)
    for gate in report["gates"]:
        result = "[green]pass[/]" if gate["passed"] else "[red]FAIL[/]"
        table.add_row(gate["gate"], result, gate["detail"])
    console = Console()
    console.print(table)
    if report["promoted"]:
        console.print(
            f"version {report['version']} is champion (was {report['previous_champion']})"
        )
