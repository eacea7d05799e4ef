"""Point-in-time training sets: impressions, their labels, and features as of each one.

For a time range ``[start, end)``, :func:`build_rows` replays ``bronze/events``
in event-time order through the same :class:`~flows.features.tiles.EntityTiles`
the stream uses. Each impression in the range gets the ``user`` and ``product``
features **as of its event time**, computed before any event at or after that
time is counted — so nothing from the future leaks in, and the row equals what
the online store served at that moment. The label is 1 when the same user buys
the same product within 30 minutes after the impression (event time).

Two edges are deliberate:

- History before ``start`` is replayed (31 days: the longest window) so the
  first impressions see complete windows.
- Impressions less than 30 minutes before the newest event read are left out:
  their label is not known yet, and calling them negatives would bias the set.

The same replay can also sample *reference requests*
(:class:`~training.replay.ReferenceRequests`):
what serving would have scored as sessions started in the range's validation
part — the user's features then, and every product allowed in the region. That,
not the impressions, is the population the monitor compares served traffic
with (:mod:`training.profiles`).

:func:`build_training_set` reads one pinned Delta version of each table and
returns those versions with the rows, for lineage.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from infra.contracts.events import ShopEvent
from infra.contracts.tables import BRONZE_EVENTS, SourcePosition, TableName, event_row
from infra.contracts.validate import validate
from infra.errors import InvalidInputError, NotFoundError
from infra.lake import open_table, table_version
from infra.plantly.catalog import Catalog, load_catalog
from infra.plantly.simulator import ShopSimulator, SimulationConfig
from infra.settings import Settings
from training.contract import append_row, empty_columns
from training.replay import REQUEST, ReferenceRequests, Replay

LABEL_WINDOW_S = 30 * 60
_NO_BRONZE = "run the ingest flow first"
WARM_UP = timedelta(days=31)
EXTRA_COLUMNS = ("label", "event_ts", "event_id")
_EVENT_COLUMNS = [
    "event_id", "event_type", "event_ts", "user_id", "product_id", "region", "device",
    "price", "quantity", "source_partition", "source_offset",
]  # fmt: skip
_READ_COLUMNS = [*_EVENT_COLUMNS, "session_id"]


@dataclass
class TrainingSet:
    """Rows of one time range and the Delta table versions they were built from.

    ``reference_rows`` are the serving-shaped reference requests sampled from the
    range (see :class:`~training.replay.ReferenceRequests`); empty when none were asked for.
    """

    frame: pd.DataFrame
    start: datetime
    end: datetime
    delta_versions: dict[str, int]
    skipped: dict[str, int] = field(default_factory=dict)
    reference_rows: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def label_rate(self) -> float:
        return float(self.frame["label"].mean()) if len(self.frame) else 0.0

    @property
    def reference_requests(self) -> int:
        rows = self.reference_rows
        return int(rows[REQUEST].nunique()) if REQUEST in rows.columns else 0


def build_rows(
    events: pa.Table,
    start: float,
    end: float,
    catalog: Catalog,
    skipped: dict[str, int] | None = None,
    *,
    requests: ReferenceRequests | None = None,
) -> pd.DataFrame:
    """Contract rows plus ``label``, ``event_ts``, ``event_id`` for impressions in [start, end).

    ``events`` has the ``bronze/events`` columns (any order of rows). Counts of
    impressions left out, by reason, are added to ``skipped``. With ``requests``,
    the same replay also collects its reference requests (read them from
    :attr:`~training.replay.ReferenceRequests.frame`).
    """
    ordered = _in_event_time_order(events)
    purchases = _purchase_times(ordered)
    horizon = _newest_ts(ordered) - LABEL_WINDOW_S
    wanted = requests.choose(ordered, start, end, horizon, catalog) if requests else {}
    columns = empty_columns()
    extra: dict[str, list[object]] = {name: [] for name in EXTRA_COLUMNS}
    left_out: dict[str, int] = defaultdict(int)
    replay = Replay()
    for row in _rows_of(ordered):
        ts = replay.feed(row)
        if row["event_type"] != "impression" or not start <= ts < end:
            continue
        if wanted and requests is not None:
            request = wanted.pop(row["event_id"], None)
            if request is not None:  # a sampled session starts: what would serving score?
                requests.collect(request, row, ts, replay, catalog)
        reason = _left_out_because(row["product_id"], ts, horizon, catalog)
        if reason is not None:
            left_out[reason] += 1
            continue
        user_id, product_id = row["user_id"], row["product_id"]
        append_row(
            columns, user_id, product_id, row["region"], row["device"],
            replay.user(user_id, ts), replay.product(product_id, ts), catalog, ts,
        )  # fmt: skip
        extra["label"].append(_label(purchases.get((user_id, product_id)), ts))
        extra["event_ts"].append(ts)
        extra["event_id"].append(row["event_id"])
    if skipped is not None:
        for reason, count in left_out.items():
            skipped[reason] = skipped.get(reason, 0) + count
    return _frame(columns, extra)


def _left_out_because(product_id: str, ts: float, horizon: float, catalog: Catalog) -> str | None:
    if ts > horizon:
        return "label_not_known_yet"
    if product_id not in catalog:
        return "product_not_in_catalog"
    return None


def _label(purchased_at: list[float] | None, ts: float) -> int:
    """1 when a purchase falls in [ts, ts + 30 min]."""
    if not purchased_at:
        return 0
    index = bisect_left(purchased_at, ts)
    return int(index < len(purchased_at) and purchased_at[index] <= ts + LABEL_WINDOW_S)


def _purchase_times(events: pa.Table) -> dict[tuple[str, str], list[float]]:
    bought = events.filter(pc.equal(events["event_type"], "purchase"))
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for user_id, product_id, ts in zip(
        bought["user_id"].to_pylist(), bought["product_id"].to_pylist(),
        bought["event_ts"].to_pylist(), strict=True,
    ):  # fmt: skip
        times[(user_id, product_id)].append(ts.timestamp())
    for values in times.values():
        values.sort()
    return times


def _in_event_time_order(events: pa.Table) -> pa.Table:
    keys = [("event_ts", "ascending")]
    if "source_partition" in events.column_names:
        keys += [("source_partition", "ascending"), ("source_offset", "ascending")]
    return events.take(pc.sort_indices(events, keys))


def _newest_ts(events: pa.Table) -> float:
    if events.num_rows == 0:
        return float("-inf")
    newest = pc.max(events["event_ts"]).as_py()
    return float(newest.timestamp())


def _rows_of(events: pa.Table) -> Iterator[dict[str, Any]]:
    names = [name for name in _EVENT_COLUMNS if name in events.column_names]
    for batch in events.select(names).to_batches(max_chunksize=50_000):
        yield from batch.to_pylist()


def _frame(columns: dict[str, list[object]], extra: dict[str, list[object]]) -> pd.DataFrame:
    frame = pd.DataFrame({**columns, **extra})
    for name in ("label",):
        frame[name] = frame[name].astype("int64")
    return frame


def time_split(
    frame: pd.DataFrame, validation_fraction: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train on the earlier rows, validate on the latest ``validation_fraction`` of them.

    Rows of the same instant stay on one side, so a validation row never shares a
    timestamp with a training row.
    """
    if not 0 < validation_fraction < 1:
        raise InvalidInputError("validation_fraction must be between 0 and 1")
    ordered = frame.sort_values("event_ts", kind="stable").reset_index(drop=True)
    if len(ordered) < 2:
        raise InvalidInputError(f"{len(ordered)} rows cannot be split into train and validation")
    cut_ts = ordered["event_ts"].iloc[int(len(ordered) * (1 - validation_fraction))]
    train = ordered[ordered["event_ts"] < cut_ts].reset_index(drop=True)
    valid = ordered[ordered["event_ts"] >= cut_ts].reset_index(drop=True)
    return train, valid


# -- sources of events ---------------------------------------------------------


def read_events(settings: Settings, start: datetime, end: datetime) -> tuple[int, pa.Table]:
    """Bronze events from ``start`` - 31 days to ``end`` + 30 minutes, at one pinned version."""
    table = open_table(settings, TableName.BRONZE_EVENTS, _NO_BRONZE)
    version = int(table.version())
    first = (start - WARM_UP).date()
    last = (end + timedelta(seconds=LABEL_WINDOW_S)).date()
    date_field = ds.field("event_date")
    in_range = (date_field >= pa.scalar(first, pa.date32())) & (
        date_field <= pa.scalar(last, pa.date32())
    )
    data = table.to_pyarrow_dataset().to_table(columns=_READ_COLUMNS, filter=in_range)
    return version, data


def newest_event_time(settings: Settings) -> datetime:
    """Event time of the newest bronze event: where a "recent window" ends."""
    table = open_table(settings, TableName.BRONZE_EVENTS, _NO_BRONZE)
    column = table.to_pyarrow_dataset().to_table(columns=["event_ts"])["event_ts"]
    newest: datetime | None = pc.max(column).as_py()
    if newest is None:
        raise NotFoundError(f"the {TableName.BRONZE_EVENTS} table is empty: {_NO_BRONZE}")
    return newest + timedelta(seconds=1)  # the range end is exclusive


def build_training_set(
    settings: Settings,
    start: datetime,
    end: datetime,
    catalog: Catalog | None = None,
    *,
    reference_requests: int = 0,
) -> TrainingSet:
    """Rows for impressions in [start, end) from pinned versions of the Delta tables.

    With ``reference_requests`` > 0, that many serving-shaped reference requests
    at most are sampled from the validation part (``settings.training.validation_fraction``).
    """
    if end <= start:
        raise InvalidInputError(f"the training range is empty: {start} .. {end}")
    version, events = read_events(settings, start, end)
    versions = {TableName.BRONZE_EVENTS: version}
    catalog_at = table_version(settings, TableName.CATALOG)
    if catalog_at is not None:
        versions[TableName.CATALOG] = catalog_at
    skipped: dict[str, int] = {}
    requests = (
        ReferenceRequests(settings.training.validation_fraction, reference_requests)
        if reference_requests > 0
        else None
    )
    frame = build_rows(
        events, start.timestamp(), end.timestamp(), catalog or load_catalog(), skipped,
        requests=requests,
    )  # fmt: skip
    reference = requests.frame if requests is not None else pd.DataFrame()
    return TrainingSet(frame, start, end, versions, skipped, reference)


def simulated_events(config: SimulationConfig, catalog: Catalog | None = None) -> pa.Table:
    """A ``bronze/events`` table straight from the simulator, without Kafka or Delta.

    For tests and benchmarks; deliberately broken events are dropped as ingest would.
    """
    catalog = catalog or load_catalog()
    rows = []
    for offset, message in enumerate(ShopSimulator(config, catalog).messages()):
        if message.topic != "events":
            continue
        event = validate(message.value, kind="event", products=catalog.product_ids)
        if isinstance(event, ShopEvent):
            rows.append(event_row(event, SourcePosition("shop.events", 0, offset)))
    return pa.Table.from_pylist(rows, schema=BRONZE_EVENTS)


def describe(training_set: TrainingSet) -> str:
    """A one-line JSON summary for logs and the CLI."""
    return json.dumps(
        {
            "rows": len(training_set.frame),
            "label_rate": round(training_set.label_rate, 4),
            "start": training_set.start.isoformat(),
            "end": training_set.end.isoformat(),
            "delta_versions": training_set.delta_versions,
            "skipped": training_set.skipped,
            "reference_requests": training_set.reference_requests,
        }
    )
