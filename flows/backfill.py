"""Backfill: replay bronze Delta through the feature code into Redis and the feature log.

``tributary backfill --from D1 --to D2`` reads ``bronze/events`` at one pinned
table version, from 31 days before D1 (so every window is complete on D1) to
the table's end, in event-time order, and folds the events into the same
:class:`~flows.features.tiles.EntityTiles` the stream uses. Then:

- **Redis** gets every replayed entity's state as of the table's end — exactly
  what the stream holds after the same events, so a wiped Redis is rebuilt with
  ``--from`` 30 days back. Writes are absolute values: running it twice is safe.
- **The feature log** rows of events dated D1..D2 are replaced in one Delta
  overwrite of that date range, so a rerun rewrites the range instead of adding
  to it. Rows come from event-time order, which can differ from the stream's
  rows for events that arrived late: the backfill's are the corrected history.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import write_deltalake
from redis import Redis
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from flows.feature_log import LogBuilder, log_table
from flows.features.definitions import get_view
from flows.features.online import write_entities
from flows.features.tiles import EntityTiles
from infra.contracts.tables import TableName
from infra.lake import open_table
from infra.settings import Settings

WARM_UP = timedelta(days=31)
_COLUMNS = [
    "event_id", "event_type", "event_ts", "user_id", "product_id", "price", "quantity",
    "source_topic", "source_partition", "source_offset",
]  # fmt: skip
_REDIS_CHUNK = 1_000


@dataclass
class BackfillReport:
    bronze_version: int
    start: str
    end: str
    views: list[str]
    events_replayed: int = 0
    entities_written: dict[str, int] = field(default_factory=dict)
    log_rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def read_bronze(settings: Settings, since: date) -> tuple[int, pa.Table]:
    """Events dated ``since`` or later, in event-time order, and the version read."""
    table = open_table(settings, TableName.BRONZE_EVENTS, "run the ingest flow first")
    version = int(table.version())
    data = table.to_pyarrow_dataset().to_table(
        columns=_COLUMNS, filter=ds.field("event_date") >= pa.scalar(since, pa.date32())
    )
    order = pc.sort_indices(
        data, [("event_ts", "ascending"), ("source_partition", "ascending"),
               ("source_offset", "ascending")],
    )  # fmt: skip
    return version, data.take(order)


def replay(
    data: pa.Table,
    views: list[str],
    first: date,
    last: date,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, dict[str, EntityTiles]], dict[str, LogBuilder]]:
    """Fold events into tiles per view; log rows for events dated first..last."""
    states: dict[str, dict[str, EntityTiles]] = {view: {} for view in views}
    rows = {view: LogBuilder(get_view(view)) for view in views}
    specs = {view: get_view(view) for view in views}
    for count, event in enumerate(_events(data), start=1):
        ts = event["event_ts"].timestamp()
        logged = first <= event["event_ts"].date() <= last
        for view in views:
            entity_id = event[specs[view].entity]
            tiles = states[view].get(entity_id)
            if tiles is None:
                tiles = states[view][entity_id] = EntityTiles()
            tiles.add(event["event_type"], ts, event["price"], event["quantity"])
            if logged:
                source = (event["source_topic"], event["source_partition"], event["source_offset"])
                values = tiles.features(specs[view], ts)
                rows[view].add(entity_id, event["event_id"], ts, values, source)
        if on_progress is not None and count % 10_000 == 0:
            on_progress(count)
    return states, rows


def _events(data: pa.Table) -> Iterator[dict[str, Any]]:
    for batch in data.to_batches(max_chunksize=50_000):
        yield from batch.to_pylist()


def write_log(settings: Settings, view: str, rows: LogBuilder, first: date, last: date) -> None:
    """Replace the log's rows dated first..last with ``rows``, in one commit."""
    write_deltalake(
        settings.table_uri(log_table(view)),
        rows.table(),
        mode="overwrite",
        predicate=f"event_date >= '{first.isoformat()}' AND event_date <= '{last.isoformat()}'",
        partition_by=["event_date"],
        storage_options=settings.lake_storage_options or None,
    )


def write_online(settings: Settings, view: str, states: dict[str, EntityTiles]) -> int:
    client = Redis.from_url(settings.redis_url)
    try:
        items = [(view, entity_id, tiles) for entity_id, tiles in states.items()]
        for start in range(0, len(items), _REDIS_CHUNK):
            write_entities(client, settings, items[start : start + _REDIS_CHUNK])
    finally:
        client.close()
    return len(states)


def run_backfill(
    settings: Settings, first: date, last: date, view: str, *, as_json: bool = False
) -> BackfillReport:
    started = time.perf_counter()
    views = ["user", "product"] if view == "all" else [get_view(view).name]
    console = Console(stderr=True)
    version, data = read_bronze(settings, first - WARM_UP)
    report = BackfillReport(version, first.isoformat(), last.isoformat(), views)
    report.events_replayed = data.num_rows
    if not as_json:
        console.print(f"bronze/events at version {version}: {data.num_rows} events to replay")
    columns = (TextColumn("backfill"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, disable=as_json) as bar:
        task = bar.add_task("events", total=data.num_rows)
        states, rows = replay(data, views, first, last, lambda n: bar.update(task, completed=n))
        bar.update(task, completed=data.num_rows)
    for name in views:
        report.entities_written[name] = write_online(settings, name, states[name])
        write_log(settings, name, rows[name], first, last)
        report.log_rows[name] = len(rows[name])
    report.seconds = round(time.perf_counter() - started, 3)
    _print(report, as_json)
    return report


def _print(report: BackfillReport, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(report)))
        return
    print(
        f"rebuilt {report.entities_written} entities in Redis and {report.log_rows} log rows "
        f"for {report.start}..{report.end} from bronze/events version {report.bronze_version} "
        f"in {report.seconds:.1f} s"
    )
