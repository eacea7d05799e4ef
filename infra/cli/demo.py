"""``tributary demo``: the plantly.shop story on the local stack, end to end.

Each chapter is one step a user could run by hand. The packages above infra
add their chapters under the ``tributary.demo`` entry-point group (a function
taking the settings and a console), run in the order of their names.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

import typer
from rich.console import Console

from infra.cli.app import CommandGroups
from infra.cli.simulate import print_report, run_simulation
from infra.cli.stack import print_actions, print_status, write_catalog
from infra.plantly.simulator import Scenario, ShopSimulator, SimulationConfig
from infra.plantly.traffic import KafkaSink
from infra.settings import Settings, load_settings

CHAPTER_GROUP = "tributary.demo"


def register(groups: CommandGroups) -> None:
    groups.root.command("demo")(demo)


def demo(
    events: int = typer.Option(100_000, "--events", min=1, help="History events to simulate."),
    history_days: float = typer.Option(7.0, "--history-days", min=0.0, max=30.0),
    bad_events: int = typer.Option(2_000, "--bad-events", min=0, help="Bad-input burst size."),
    recent_rate: float = typer.Option(
        50.0, "--recent-rate", min=0.0, help="Events/s of the history's last hour (0: none)."
    ),
    seed: int = typer.Option(42, "--seed"),
) -> None:
    """Start the stack, simulate plantly.shop, and show what landed."""
    from infra.stack import status, up

    console = Console()
    settings = load_settings()
    console.rule("1. the local stack: tributary up")
    report = up(settings, after_start=[write_catalog])
    print_actions(report.parts)
    for note in report.notes:
        console.print(note)

    console.rule(f"2. {history_days:g} days of plantly.shop: tributary simulate")
    history = SimulationConfig(events=events, seed=seed, history_days=history_days)
    _simulate(settings, history)
    if recent_rate:
        # The live traffic of the monitoring chapter runs at about this rate: a last hour
        # as busy makes the model's reference look like the traffic it will be served.
        console.print(f"and the last hour at {recent_rate:g} events/s, as busy as the shop is now")
        recent = SimulationConfig(
            events=int(recent_rate * 3600), seed=seed + 2, history_days=1 / 24
        )
        _simulate(settings, recent)

    if bad_events:
        console.rule("3. malformed traffic for the dead-letter path: --scenario bad-input")
        burst = SimulationConfig(
            events=bad_events, seed=seed + 1, scenario=Scenario.BAD_INPUT, bad_fraction=0.2
        )
        _simulate(settings, burst)

    console.rule("4. what landed: tributary status")
    print_status(status(settings))
    for number, entry in enumerate(_chapters(), start=5):
        console.rule(f"{number}. {entry.name.partition('-')[2] or entry.name}")
        entry.load()(settings, console)
    console.print("The stack keeps running; `tributary down` stops it.")


def _chapters() -> list[EntryPoint]:
    return sorted(entry_points(group=CHAPTER_GROUP), key=lambda entry: entry.name)


def _simulate(settings: Settings, config: SimulationConfig) -> None:
    report = run_simulation(ShopSimulator(config), [KafkaSink(settings)], None, quiet=False)
    print_report(report, config, as_json=False)
