"""Commands of the monitoring package: ``parity``.

Registered under the ``tributary.cli`` entry-point group; the parity code (and
pyarrow, Kafka, the catalog) is imported inside the command, so
``tributary --help`` stays fast.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from infra.cli.app import CommandGroups
from infra.settings import load_settings

if TYPE_CHECKING:
    from monitoring.parity import ParityReport

MAX_SAMPLE = 100_000


def register(groups: CommandGroups) -> None:
    groups.root.command("parity")(parity_command)


def parity_command(
    sample: int | None = typer.Option(
        None,
        "--sample",
        min=1,
        max=MAX_SAMPLE,
        help="How many of the newest logged predictions to check "
        "(default: the monitor's monitoring.parity_sample).",
    ),
    lag_allowance: float = typer.Option(
        0.0,
        "--lag-allowance",
        min=0.0,
        max=300.0,
        help="Seconds of feature lag to forgive: differences explained by events stamped "
        "this long before a request not yet being counted online are reported apart.",
    ),
    timeout: float = typer.Option(
        30.0, "--timeout", min=1.0, help="Seconds to wait for the prediction log."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Recompute logged feature rows from Delta and compare them with what serving used.

    Exits 0 when every value matches, 1 when any differs (or the check cannot run).
    """
    from monitoring.parity import check_parity

    settings = load_settings()
    report = check_parity(
        settings,
        sample or settings.monitoring.parity_sample,
        lag_allowance_s=lag_allowance,
        timeout=timeout,
    )
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
    else:
        _print(report)
    if not report.clean:
        raise typer.Exit(1)


def _print(report: ParityReport) -> None:
    console = Console()
    tally = report.tally
    pinned = ", ".join(f"{name} version {v}" for name, v in report.delta_versions.items())
    console.print(f"recomputed from {pinned or 'nothing (no logged predictions)'}")
    unreadable = sum(report.unparsed.values()) + sum(tally.skipped.values())
    console.print(
        f"{tally.records} of the {report.messages} newest logged predictions checked "
        f"({unreadable} unreadable: {dict(report.unparsed) | dict(tally.skipped)}), "
        f"{tally.values} values, {tally.events_replayed} events replayed, {report.seconds:.2f} s"
    )
    if tally.values == 0:
        return
    table = Table("feature", "mismatches", "share", "explained by lag")
    per_column = tally.values // len(tally.by_column)
    for name, count in tally.by_column.items():
        style = "red" if count else None
        share = f"{count / per_column:.2%}"
        table.add_row(name, str(count), share, str(tally.lagged[name]), style=style)
    console.print(table)
    for example in tally.examples:
        age = "" if example.event_age_s is None else f", newest event {example.event_age_s:.3f} s"
        console.print(
            f"  {example.request_id} {example.column} ({example.product_id}): "
            f"online {example.online!r}, offline {example.offline!r}{age}"
        )
    verdict = "parity holds" if report.clean else "MISMATCHES"
    console.print(
        f"{verdict}: {tally.mismatched_values} of {tally.values} values "
        f"({report.mismatch_ratio:.4%}) in {tally.mismatched_records} records"
    )
    lagged = sum(tally.lagged.values())
    if report.lag_allowance_s:
        console.print(
            f"{lagged} more values differ as feature lag of up to "
            f"{report.lag_allowance_s:g} s explains: not counted"
        )
    elif tally.examples and all((e.event_age_s or math.inf) < 60 for e in tally.examples):
        console.print(
            "the examples' entities had events seconds before their requests: if the "
            "feature flow was behind, try --lag-allowance (docs/parity.md)"
        )
