"""Commands of the flows package: ``run ingest|features``, ``backfill``, ``features get``.

Registered under the ``tributary.cli`` entry-point group; the heavy imports
(Bytewax, Delta, Redis) happen inside the commands.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import date

import typer

from infra.cli.app import CommandGroups
from infra.cli.errors import CliError
from infra.errors import ConfigError
from infra.settings import load_settings


def register(groups: CommandGroups) -> None:
    from flows.features.cli import register as register_features
    from flows.runner import flow_factories

    for flow in flow_factories():
        groups.run.command(flow, help=_FLOW_HELP.get(flow))(_run_command(flow))
    groups.root.command("backfill")(backfill_command)
    register_features(groups)


# flows that resume from their own checkpoints (the learner: MLflow) instead of Bytewax's
_OWN_RECOVERY = frozenset({"learner"})

_FLOW_HELP = {
    "ingest": "Validate shop.events/shop.orders into bronze Delta; bad input to shop.dlq.",
    "features": "Maintain the user and product feature views in Redis and the feature log.",
    "learner": "Learn a River model from impressions and their labels as they arrive.",
    "scorer": "Score recommendation requests from a topic with the champion model.",
    "monitor": "Window statistics, drift and outcomes of logged predictions; to ml.monitor.",
}


def _run_command(flow: str) -> Callable[..., None]:
    def command(
        workers: int = typer.Option(
            1, "--workers", "-w", min=1, help="Worker threads per process."
        ),
        processes: int = typer.Option(
            1, "--processes", "-p", min=1, help="Processes (scale here)."
        ),
        process_id: int | None = typer.Option(
            None, "--process-id", min=0, help="This process's index in a multi-machine cluster."
        ),
        addresses: str | None = typer.Option(
            None, "--addresses", help="host:port of every process, ';'-separated, same order."
        ),
        recovery: bool = typer.Option(
            flow not in _OWN_RECOVERY, "--recovery/--no-recovery", help="Snapshot state."
        ),
        snapshot_interval: float = typer.Option(
            5.0, "--snapshot-interval", min=0.1, help="Seconds between snapshots (epochs)."
        ),
        until_end: bool = typer.Option(
            False, "--until-end", help="Stop at the topics' current end instead of following."
        ),
    ) -> None:
        from flows.runner import RunPlan, run_local_cluster, run_process, self_command

        listed = tuple(a for a in (addresses or "").split(";") if a)
        try:
            plan = RunPlan(
                flow=flow, workers=workers, processes=processes, process_id=process_id,
                addresses=listed, recovery=recovery, snapshot_interval_s=snapshot_interval,
                tail=not until_end,
            )  # fmt: skip
        except ConfigError as error:
            raise CliError(str(error)) from error
        settings = load_settings()
        if processes > 1 and process_id is None:
            options = _forwarded_options(workers, processes, recovery, snapshot_interval, until_end)
            sys.exit(run_local_cluster(settings, plan, self_command(flow, options)))
        run_process(settings, plan)

    command.__doc__ = _FLOW_HELP.get(flow, f"Run the {flow} dataflow.")
    return command


def _forwarded_options(
    workers: int, processes: int, recovery: bool, snapshot_interval: float, until_end: bool
) -> list[str]:
    options = ["--workers", str(workers), "--processes", str(processes)]
    options += ["--snapshot-interval", str(snapshot_interval)]
    options.append("--recovery" if recovery else "--no-recovery")
    if until_end:
        options.append("--until-end")
    return options


def backfill_command(
    start: str = typer.Option(..., "--from", help="First event date to rebuild (YYYY-MM-DD)."),
    end: str = typer.Option(..., "--to", help="Last event date to rebuild (YYYY-MM-DD)."),
    view: str = typer.Option("all", "--view", help="user, product or all."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Replay bronze Delta through the feature code into Redis and the feature log."""
    from flows.backfill import run_backfill

    try:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
    except ValueError as error:
        raise CliError(f"--from/--to must be dates like 2026-11-01: {error}") from error
    if last < first:
        raise CliError("--to is before --from")
    if view not in ("user", "product", "all"):
        raise CliError(f"--view must be user, product or all, not {view!r}")
    run_backfill(load_settings(), first, last, view, as_json=as_json)
