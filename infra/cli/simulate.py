"""``tributary simulate``: plantly.shop traffic to Kafka and/or JSONL files."""

from __future__ import annotations

import json
import random
import sys
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from infra.cli.app import CommandGroups
from infra.cli.errors import CliError
from infra.contracts.events import MAX_EVENT_AGE
from infra.plantly.catalog import ensure_catalog_table
from infra.plantly.simulator import Scenario, ShopSimulator, SimulationConfig
from infra.plantly.storefront import ApiStorefront
from infra.plantly.traffic import JsonlSink, KafkaSink, TrafficReport, TrafficSink, send_traffic
from infra.settings import Settings


def register(groups: CommandGroups) -> None:
    groups.root.command("simulate")(simulate)


def simulate(
    events: int = typer.Option(10_000, "--events", min=1, help="Messages on shop.events."),
    rate: float | None = typer.Option(
        None, "--rate", min=0.001, help="Events per second; as fast as possible if omitted."
    ),
    history_days: float = typer.Option(
        0.0, "--history-days", min=0.0, help="Spread event times over the past D days (≤ 30)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Same seed and anchor, same events."),
    scenario: Scenario = typer.Option(Scenario.STEADY, "--scenario"),
    bad_fraction: float = typer.Option(
        0.05, "--bad-fraction", min=0.0, max=1.0, help="Share of bad events for bad-input."
    ),
    users: int = typer.Option(5_000, "--users", min=1, help="Size of the shopper population."),
    anchor: datetime | None = typer.Option(
        None, "--anchor", help="End of the simulated history (UTC if no zone); default now."
    ),
    jsonl: Path | None = typer.Option(None, "--jsonl", help="Also write events/orders JSONL here."),
    no_kafka: bool = typer.Option(False, "--no-kafka", help="Write only the JSONL files."),
    as_json: bool = typer.Option(False, "--json", help="Print the run's report as JSON."),
    via_api: str | None = typer.Option(
        None,
        "--via-api",
        metavar="URL",
        help="Show what the prediction API ranks (e.g. http://127.0.0.1:8000): impressions "
        "carry its request_id. Live traffic only.",
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="TRIBUTARY_SIMULATOR_API_KEY",
        help="X-API-Key for --via-api; default the first key of TRIBUTARY_API_KEYS.",
    ),
) -> None:
    """Produce realistic plantly.shop traffic."""
    if history_days > MAX_EVENT_AGE.days:
        raise CliError(
            f"--history-days must be at most {MAX_EVENT_AGE.days} (older events go to the DLQ)"
        )
    if no_kafka and jsonl is None:
        raise CliError("--no-kafka needs --jsonl DIR, or nothing would be written")
    if via_api is not None and history_days > 0:
        raise CliError("--via-api needs live traffic: the API ranks as of now, not in the past")
    if anchor is not None and anchor.tzinfo is None:
        anchor = anchor.replace(tzinfo=UTC)
    chosen_seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    config = SimulationConfig(
        events=events, seed=chosen_seed, scenario=scenario, history_days=history_days,
        anchor=anchor, users=users, bad_fraction=bad_fraction,
    )  # fmt: skip
    settings = Settings()
    sinks: list[TrafficSink] = []
    if not no_kafka:
        ensure_catalog_table(settings)
        sinks.append(KafkaSink(settings))
    if jsonl is not None:
        sinks.append(JsonlSink(jsonl))
    storefront = None if via_api is None else api_storefront(settings, via_api, api_key)
    try:
        report = run_simulation(ShopSimulator(config, storefront=storefront), sinks, rate,
                                quiet=as_json)  # fmt: skip
    finally:
        if storefront is not None:
            storefront.close()
    print_report(report, config, as_json)
    if storefront is not None and not as_json:
        typer.echo(f"asked {via_api} {storefront.calls} times ({storefront.failures} failed)")


def api_storefront(settings: Settings, url: str, api_key: str | None) -> ApiStorefront:
    """The prediction API as the shop's storefront, with the given or the first configured key."""
    if api_key is None:
        try:
            api_key = next(iter(settings.api_key_roles()), None)
        except ValueError as error:
            raise CliError(str(error)) from None
    return ApiStorefront(url, api_key)


def run_simulation(
    simulator: ShopSimulator, sinks: list[TrafficSink], rate: float | None, *, quiet: bool
) -> TrafficReport:
    columns = (TextColumn("simulate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    console = Console(stderr=True)
    with Progress(*columns, console=console, disable=quiet or not console.is_terminal) as bar:
        task = bar.add_task("events", total=simulator.config.events)
        return send_traffic(
            simulator, sinks, rate=rate, on_progress=lambda n: bar.update(task, completed=n)
        )


def print_report(report: TrafficReport, config: SimulationConfig, as_json: bool) -> None:
    summary = {
        "run_id": report.run_id,
        "seed": config.seed,
        "scenario": config.scenario.value,
        "events": report.events,
        "orders": report.orders,
        "bad_events": dict(report.rejected_by_design),
        "seconds": round(report.seconds, 3),
        "events_per_second": round(report.events_per_second),
    }
    if as_json:
        json.dump(summary, sys.stdout)
        sys.stdout.write("\n")
        return
    typer.echo(
        f"simulated {report.events} events and {report.orders} orders "
        f"in {report.seconds:.1f} s ({report.events_per_second:,.0f} events/s); "
        f"seed {config.seed}, run {report.run_id}"
    )
    if report.rejected_by_design:
        typer.echo(f"bad events by design: {dict(report.rejected_by_design)}")
