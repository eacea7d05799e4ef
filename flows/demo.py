"""The flows' chapter of ``tributary demo``: ingest and features over what was simulated."""

from __future__ import annotations

import time

from deltalake import DeltaTable
from redis import Redis
from rich.console import Console

from flows.features.cli import print_row
from flows.features.definitions import get_view
from flows.features.online import read_features
from flows.runner import RunPlan, run_process
from infra.contracts.tables import TableName
from infra.kafka.reader import end_offsets
from infra.settings import Settings


def streams(settings: Settings, console: Console) -> None:
    """Run both flows to the topics' end, then read a shopper's features back."""
    # in this process and to the end only: no metrics endpoint, whose port would stay
    # taken for the running flows the demo starts later
    quiet = settings.model_copy(update={"metrics_port": 0})
    for name in ("ingest", "features"):
        console.print(f"tributary run {name} --until-end")
        started = time.perf_counter()
        run_process(quiet, RunPlan(flow=name, recovery=False, tail=False))
        console.print(f"  done in {time.perf_counter() - started:.1f} s")
    bronze = DeltaTable(settings.table_uri(TableName.BRONZE_EVENTS))
    dlq = sum(end_offsets(settings, settings.topic(settings.topics.dlq)).values())
    console.print(
        f"bronze/events: {bronze.to_pyarrow_table(columns=['event_id']).num_rows} events "
        f"(version {bronze.version()}); shop.dlq: {dlq} rejected messages"
    )
    _show_busiest_user(settings, console, bronze)


def _show_busiest_user(settings: Settings, console: Console, bronze: DeltaTable) -> None:
    users = bronze.to_pyarrow_table(columns=["user_id"]).column("user_id")
    counts = users.value_counts().to_pylist()
    busiest = max(counts, key=lambda item: item["counts"])["values"]
    client = Redis.from_url(settings.redis_url)
    try:
        row = read_features(client, settings, "user", [busiest])[0]
    finally:
        client.close()
    console.print(f"tributary features get user {busiest}")
    print_row(get_view("user"), row)
