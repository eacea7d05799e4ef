"""``tributary features get VIEW ENTITY_ID``: one entity's online features, as of now.

Registered under the ``tributary.cli`` entry-point group as
``flows.features.cli:register``. Redis is imported inside the command so that
``tributary --help`` stays quick.

>>> format_age(None), format_age(42.4), format_age(3 * 3600 + 125), format_age(2 * 86400 + 7300)
('-', '42s', '3h 02m', '2d 02h')
>>> format_value("spend_30d", 49.98), format_value("ctr_7d", 0.0), format_value("clicks_1h", 3)
('49.98', '0.0', '3')
>>> format_value("last_event_ts", 1_767_225_600.25)
'2026-01-01T00:00:00.250Z'
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flows.features.definitions import VIEWS, FeatureValue, FeatureView
from infra.cli.app import CommandGroups
from infra.cli.errors import CliError
from infra.settings import load_settings

if TYPE_CHECKING:
    from flows.features.online import FeatureRow


def register(groups: CommandGroups) -> None:
    features = typer.Typer(
        help="Online features (Redis), as of now or a given time.",
        no_args_is_help=True,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    features.command("get")(get_command)
    groups.root.add_typer(features, name="features")


def get_command(
    view: str = typer.Argument(
        ..., metavar="VIEW", help=f"Feature view: {', '.join(sorted(VIEWS))}."
    ),
    entity_id: str = typer.Argument(
        ..., metavar="ENTITY_ID", help="The entity: a user_id or a product_id."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    as_of: str | None = typer.Option(
        None, "--as-of", metavar="ISO_TS", help="Read as of this time (with zone); default now."
    ),
) -> None:
    """One entity's online features with their ages; exit 1 when it has none."""
    spec = VIEWS.get(view)
    if spec is None:
        raise CliError(f"unknown feature view {view!r}; choose one of: {', '.join(sorted(VIEWS))}")
    row = _read(spec, entity_id, parse_as_of(as_of) if as_of is not None else None)
    if as_json:
        typer.echo(json.dumps(row_json(row)))
        if not row.found:
            raise typer.Exit(1)
        return
    if not row.found:
        raise CliError(f"no online features for {view} {entity_id!r} (as of {iso(row.as_of)})")
    print_row(spec, row)


def _read(view: FeatureView, entity_id: str, as_of: float | None) -> FeatureRow:
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    from flows.features.online import read_features

    settings = load_settings()
    client = Redis.from_url(settings.redis_url, socket_connect_timeout=2.0)
    try:
        return read_features(client, settings, view.name, [entity_id], as_of)[0]
    except RedisConnectionError as error:
        raise CliError(
            f"redis at {settings.redis_address} does not answer ({error}); is the stack up?"
        ) from error
    finally:
        client.close()


def parse_as_of(value: str) -> float:
    """``2026-05-01T12:00:00Z`` → epoch seconds; a time without zone is refused."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        example = "2026-05-01T12:00:00Z"
        raise CliError(f"--as-of needs an ISO 8601 time with zone, e.g. {example}; got {value!r}")
    return moment.timestamp()


def iso(ts: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def row_json(row: FeatureRow) -> dict[str, object]:
    """The ``--json`` document; an entity that was not found has no ages."""
    document: dict[str, object] = {
        "view": row.view,
        "entity_id": row.entity_id,
        "found": row.found,
        "features": row.features,
    }
    if row.found:
        document["ages"] = row.ages
    document["as_of"] = iso(row.as_of)
    return document


def format_value(name: str, value: FeatureValue) -> str:
    if value is None:
        return "-"
    if name == "last_event_ts":
        return iso(value)
    if isinstance(value, int):
        return str(value)
    text = f"{value:.4f}".rstrip("0")  # 49.98, 0.2, 0.0
    return f"{text}0" if text.endswith(".") else text


def format_age(age: float | None) -> str:
    if age is None:
        return "-"
    # negative only for an event stamped after as_of (the stream allows 5 minutes ahead)
    sign, seconds = ("-" if age < 0 else ""), int(abs(age))
    if seconds < 60:
        return f"{sign}{seconds}s"
    if seconds < 3600:
        return f"{sign}{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{sign}{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{sign}{seconds // 86400}d {seconds % 86400 // 3600:02d}h"


def print_row(view: FeatureView, row: FeatureRow) -> None:
    title = escape(f"{view.name} {row.entity_id} as of {iso(row.as_of)}")
    table = Table("feature", "value", "age", title=title)
    for name in view.names:
        table.add_row(name, format_value(name, row.features[name]), format_age(row.ages[name]))
    Console().print(table)
