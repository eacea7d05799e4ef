"""``tributary up``, ``down`` and ``status``: the local stack from the command line.

The stack modules pull in the Kafka, Redis and HTTP clients, so they are
imported inside the commands and ``tributary --help`` stays quick.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from infra.cli.app import CommandGroups
from infra.cli.errors import CliError
from infra.settings import Settings, load_settings

if TYPE_CHECKING:
    from infra.stack.stack import PartAction, StackStatus


def register(groups: CommandGroups) -> None:
    groups.root.command("up")(up_command)
    groups.root.command("down")(down_command)
    groups.root.command("status")(status_command)


def write_catalog(settings: Settings) -> str:
    """After-start hook: the plant catalog table every flow validates against."""
    from infra.plantly.catalog import ensure_catalog_table

    return f"catalog: table version {ensure_catalog_table(settings)}"


def parse_timeouts(values: list[str]) -> dict[str, float]:
    """``["mlflow=90"]`` → ``{"mlflow": 90.0}``."""
    timeouts: dict[str, float] = {}
    for value in values:
        name, _, seconds = value.partition("=")
        try:
            limit = float(seconds)
        except ValueError:
            limit = 0.0
        if not name.strip() or limit <= 0:
            raise CliError(f"--timeout expects PART=SECONDS, e.g. mlflow=90; got {value!r}")
        timeouts[name.strip()] = limit
    return timeouts


def print_actions(actions: list[PartAction]) -> None:
    for action in actions:
        pid = f" (pid {action.pid})" if action.pid is not None else ""
        typer.echo(f"{action.name:<13} {action.address:<22} {action.action}{pid}")


def up_command(
    monitoring: bool = typer.Option(
        True,
        "--monitoring/--no-monitoring",
        help="Also start Prometheus (with the alert rules) and Alertmanager; on by default.",
    ),
    with_prometheus: bool = typer.Option(
        False, "--with-prometheus", hidden=True, help="Kept for old scripts: now the default."
    ),
    timeout: list[str] = typer.Option(
        [],
        "--timeout",
        metavar="PART=SECONDS",
        help="How long a part may take to become healthy (repeatable; mlflow=60, others=15).",
    ),
) -> None:
    """Start the local stack on loopback (idempotent) and create the topics."""
    from infra.stack.stack import up

    if with_prometheus and not monitoring:
        raise CliError("--with-prometheus and --no-monitoring contradict each other")
    report = up(
        load_settings(),
        monitoring=monitoring,
        after_start=[write_catalog],
        timeouts=parse_timeouts(timeout),
    )
    print_actions(report.parts)
    for note in report.notes:
        typer.echo(note)


def down_command() -> None:
    """Stop what `tributary up` started (idempotent)."""
    from infra.stack.stack import down

    stopped = down(load_settings())
    if not stopped:
        typer.echo("nothing was running")
    print_actions(stopped)


def status_command(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """What runs, whether it answers, what landed in each topic, and which alerts fire."""
    from infra.stack.stack import status

    report = status(load_settings())
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    print_status(report)


def _health_cell(healthy: bool, state: str, detail: str) -> str:
    if state == "stopped":
        return "[dim]-[/dim]"
    if healthy:
        return f"[green]healthy[/green] ({escape(detail)})"
    return f"[red]unhealthy[/red] ({escape(detail)})"


def print_status(report: StackStatus) -> None:
    console = Console()
    parts = Table("part", "address", "pid", "state", "health", title="stack")
    for part in report.parts:
        pid = str(part.pid) if part.pid is not None else "-"
        health = _health_cell(part.healthy, part.state, part.detail)
        parts.add_row(part.name, part.address, pid, part.state, health)
    console.print(parts)
    if report.topics:
        topics = Table("topic", "partitions", "messages", "end offset", title="topics")
        for topic in report.topics:
            topics.add_row(
                topic.name, str(topic.partitions), str(topic.messages), str(topic.end_offset)
            )
        console.print(topics)
    if report.topics_error:
        console.print(f"[red]topics: {escape(report.topics_error)}[/red]")
    print_alerts(console, report)


# shown elsewhere in the row, or the same on every alert of a local stack
_QUIET_LABELS = frozenset({"alertname", "severity", "retrain", "job", "instance", "profile"})


def print_alerts(console: Console, report: StackStatus) -> None:
    """The alerts Prometheus holds, firing first; nothing when Prometheus is not part of it."""
    if report.alerts_error:
        console.print(f"[red]alerts: {escape(report.alerts_error)}[/red]")
        return
    if not any(part.name == "prometheus" and part.healthy for part in report.parts):
        return
    if not report.alerts:
        console.print("alerts: none firing or pending")
        return
    table = Table("alert", "state", "severity", "labels", "since", title="alerts")
    for alert in report.alerts:
        state = "[red]firing[/red]" if alert.state == "firing" else alert.state
        shown = {k: v for k, v in alert.labels.items() if k not in _QUIET_LABELS}
        labels = ", ".join(f"{key}={value}" for key, value in sorted(shown.items()))
        table.add_row(alert.name, state, alert.severity, escape(labels), alert.active_at[:19])
    console.print(table)
