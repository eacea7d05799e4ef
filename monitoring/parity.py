"""Online/offline parity: logged feature rows against their recomputation from Delta.

Every answered request is logged with the contract rows the model scored
(:mod:`serving.prediction_log`). :func:`check_parity` takes the newest of
those records (:mod:`monitoring.prediction_sample`), reads one pinned version
of ``bronze/events`` — only the columns, the window (31 days before the
earliest sampled request) and the users and products it needs — and replays
those events in event-time order through the same
:class:`~flows.features.tiles.EntityTiles` the feature flow folds them into
(:mod:`monitoring.parity_replay`).
Records are taken in time order, so the tiles only move forward: at each
record's ``ts`` they hold exactly the events stamped before it, and
:func:`~training.contract.assemble_rows` turns them into rows with the
record's region, device and candidates, as serving did. Then every value is
compared with the logged one: strings and integers exactly, doubles within
:data:`RELATIVE_TOLERANCE` (parity is expected to be exact, the tolerance only
forgives the last bits of float arithmetic).

Two things about time are deliberate (docs/parity.md explains them):

- Serving reads Redis at the request's time, so an event stamped before a
  request that the feature flow had not yet processed (ingest or feature lag),
  or one that reached bronze but not Redis, is a real difference and is
  reported. Parity is exact only for requests made after their events landed.
  Under live traffic events are always in flight: a lag allowance counts the
  differences lag of up to that long explains apart (``tally.lagged``), and
  the monitor's :class:`ParityLoop` uses one.
- The log writes ``ts`` in milliseconds, up to 0.5 ms from the moment serving
  read. Hours since the last event therefore get :data:`TS_RESOLUTION_S` of
  slack, and a request logged on a whole minute may have been read just
  before it: its values may match the reading half a millisecond earlier.

>>> from flows.features.tiles import EntityTiles
>>> from infra.plantly.catalog import load_catalog
>>> from training.contract import assemble_rows
>>> catalog = load_catalog()
>>> pid, t0 = next(iter(catalog)), 1_796_205_600.0
>>> events = events_table([("impression", t0 - 90, "u-1", pid), ("click", t0 - 30, "u-1", pid)])
>>> served = EntityTiles()
>>> for event_type, ts in (("impression", t0 - 90), ("click", t0 - 30)):
...     served.add(event_type, ts)
>>> rows = assemble_rows("u-1", "US-CA", "mobile", served.features("user", t0 + 5),
...                      [(pid, served.features("product", t0 + 5))], catalog, t0 + 5)
>>> record = LoggedPrediction("r-1", t0 + 5, "u-1", "US-CA", "mobile", [pid], rows)
>>> tally = check_records([record], events, catalog)
>>> tally.values, tally.mismatched_values
(21, 0)
>>> rows["user_clicks_1h"] = [2]
>>> tally = check_records([record], events, catalog)
>>> tally.mismatched_values, tally.examples[0].column, tally.examples[0].online
(1, 'user_clicks_1h', 2)
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final

import pyarrow as pa
import pyarrow.dataset as ds
from prometheus_client import Gauge

from infra.contracts.tables import BRONZE_EVENTS, TableName
from infra.lake import open_table
from infra.plantly.catalog import Catalog, load_catalog
from infra.settings import Settings
from monitoring import metrics
from monitoring.parity_replay import EventLog, LagExplainer, Replay, entity_view
from monitoring.prediction_sample import LoggedPrediction, newest_predictions
from training.contract import COLUMNS, SPEC, Columns
from training.dataset import WARM_UP

_LOG = logging.getLogger("monitoring.parity")
RELATIVE_TOLERANCE: Final = 1e-9
TS_RESOLUTION_S: Final = 0.001  # the prediction log writes ts in milliseconds
# columns computed from the reading moment itself, in hours
_TIME_TOLERANCE: Final = {"user_hours_since_last_event": TS_RESOLUTION_S / 3600}
MAX_EXAMPLES: Final = 5
# the periodic check forgives differences feature lag of up to this long explains
LOOP_LAG_ALLOWANCE_S: Final = 10.0
_KINDS: Final = dict(SPEC)
_EVENT_COLUMNS: Final = [
    "event_type", "event_ts", "user_id", "product_id", "price", "quantity",
    "source_partition", "source_offset",
]  # fmt: skip
_NO_BRONZE: Final = "run the ingest flow first"


@dataclass(frozen=True, slots=True)
class Mismatch:
    """One logged value that differs from its recomputation."""

    request_id: str
    column: str
    product_id: str
    online: object
    offline: object
    # seconds from the newest event of the column's entity (stamped before the request) to
    # the request: a fraction of a second suggests feature lag rather than a wrong value
    event_age_s: float | None = None


@dataclass
class ParityTally:
    """What comparing a set of records found, column by column."""

    records: int = 0
    values: int = 0
    by_column: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))
    mismatched_records: int = 0
    examples: list[Mismatch] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    events_replayed: int = 0
    # differences explained by feature lag within the allowance, per column
    lagged: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COLUMNS, 0))

    @property
    def mismatched_values(self) -> int:
        return sum(self.by_column.values())


def check_records(
    records: Sequence[LoggedPrediction],
    events: pa.Table,
    catalog: Catalog,
    *,
    lag_allowance_s: float = 0.0,
) -> ParityTally:
    """Compare each record with its recomputation from ``events`` (bronze columns).

    With ``lag_allowance_s`` > 0, differences that feature lag of up to that long
    explains are counted apart (``tally.lagged``), not as mismatches.
    """
    tally = ParityTally()
    users = {r.user_id for r in records}
    replay = Replay(EventLog(events), users, {pid for r in records for pid in r.candidates})
    lag = None
    if lag_allowance_s > 0:
        lag = LagExplainer(replay, lag_allowance_s, catalog, same_value)
    for record in sorted(records, key=lambda r: r.ts):
        unknown = next((pid for pid in record.candidates if pid not in catalog), None)
        if unknown is not None:
            tally.skipped["product_not_in_catalog"] += 1
            continue
        replay.advance(record.ts)
        offline = replay.rows(record, catalog, record.ts)
        alternative = None
        if record.ts % 60 == 0:
            # logged on a whole minute: serving may have read up to half a millisecond
            # earlier, in the minute before, where windows end one tile sooner
            alternative = replay.rows(record, catalog, record.ts - TS_RESOLUTION_S / 2)
        _compare(record, _Readings(offline, alternative, replay, lag), tally)
    tally.events_replayed = replay.position
    return tally


@dataclass(frozen=True, slots=True)
class _Readings:
    """What one record is compared with."""

    offline: Columns
    alternative: Columns | None  # the reading just before a whole minute
    replay: Replay
    lag: LagExplainer | None


def _compare(record: LoggedPrediction, readings: _Readings, tally: ParityTally) -> None:
    found = 0
    offline, alternative = readings.offline, readings.alternative
    for name in COLUMNS:
        online = record.features[name]
        bad = _differing(name, online, offline[name])
        if bad and alternative is not None:
            bad = [i for i in bad if not same_value(name, online[i], alternative[name][i])]
        view = entity_view(name)
        if bad and readings.lag is not None and view is not None:
            unexplained = [i for i in bad if not readings.lag.explains(record, view, i)]
            tally.lagged[name] += len(bad) - len(unexplained)
            bad = unexplained
        if not bad:
            continue
        tally.by_column[name] += len(bad)
        found += len(bad)
        for i in bad[: MAX_EXAMPLES - len(tally.examples)]:
            age = _event_age(readings.replay, record, view, i)
            pid = record.candidates[i]
            tally.examples.append(
                Mismatch(record.request_id, name, pid, online[i], offline[name][i], age)
            )
    tally.records += 1
    tally.values += record.rows * len(COLUMNS)
    tally.mismatched_records += found > 0


def _event_age(
    replay: Replay, record: LoggedPrediction, view: str | None, row: int
) -> float | None:
    """Seconds from the newest event of the column's entity to the request, if any."""
    if view is None:
        return None  # context and catalog columns: no event is behind them
    entity = record.user_id if view == "user" else record.candidates[row]
    newest = replay.newest_event(view, entity)
    return None if newest is None else record.ts - newest


def _differing(name: str, online: list[object], offline: list[object]) -> list[int]:
    """Indexes where the values differ; one list comparison when all are equal (the norm)."""
    if online == offline:
        return []
    return [
        i
        for i, (a, b) in enumerate(zip(online, offline, strict=True))
        if not same_value(name, a, b)
    ]


def same_value(name: str, online: object, offline: object) -> bool:
    """Whether a logged value equals its recomputation, under the column's tolerance."""
    if online == offline:
        return True
    if _KINDS[name] != "double" or not isinstance(online, int | float):
        return False
    if not isinstance(offline, int | float):
        return False
    slack = max(RELATIVE_TOLERANCE * max(abs(online), abs(offline)), _TIME_TOLERANCE.get(name, 0.0))
    return abs(online - offline) <= slack


def events_table(rows: Sequence[tuple[str, float, str, str]]) -> pa.Table:
    """A ``bronze/events``-shaped table of ``(event_type, ts, user_id, product_id)`` rows.

    For examples and tests; purchases need price and quantity, so build those directly.
    """
    return pa.table(
        {
            "event_type": [row[0] for row in rows],
            "event_ts": pa.array(
                [datetime.fromtimestamp(row[1], UTC) for row in rows],
                BRONZE_EVENTS.field("event_ts").type,
            ),
            "user_id": [row[2] for row in rows],
            "product_id": [row[3] for row in rows],
            "price": pa.array([None] * len(rows), pa.float64()),
            "quantity": pa.array([None] * len(rows), pa.int32()),
        }
    )


# -- the check against the real lake and topic ----------------------------------


@dataclass
class ParityReport:
    """The result of one parity check, for people (``tributary parity``) and programs."""

    sample: int
    lag_allowance_s: float
    delta_versions: dict[str, int]
    messages: int
    unparsed: dict[str, int]
    tally: ParityTally
    window: tuple[datetime, datetime] | None
    seconds: float

    @property
    def mismatch_ratio(self) -> float:
        """Mismatched values per compared value; NaN when nothing was compared."""
        if self.tally.values == 0:
            return math.nan
        return self.tally.mismatched_values / self.tally.values

    @property
    def clean(self) -> bool:
        return self.tally.mismatched_values == 0

    def to_dict(self) -> dict[str, Any]:
        tally = self.tally
        ratio = self.mismatch_ratio
        return {
            "sample": self.sample,
            "lag_allowance_s": self.lag_allowance_s,
            "delta_versions": self.delta_versions,
            "messages_read": self.messages,
            "records_unparsed": dict(self.unparsed),
            "records_skipped": dict(tally.skipped),
            "records_checked": tally.records,
            "records_mismatched": tally.mismatched_records,
            "values_compared": tally.values,
            "values_mismatched": tally.mismatched_values,
            "values_explained_by_lag": sum(tally.lagged.values()),
            "mismatch_ratio": None if math.isnan(ratio) else ratio,
            "mismatches": dict(tally.by_column),
            "explained_by_lag": {name: n for name, n in tally.lagged.items() if n},
            "examples": [asdict(example) for example in tally.examples],
            "events_replayed": tally.events_replayed,
            "window": None if self.window is None else [t.isoformat() for t in self.window],
            "seconds": round(self.seconds, 3),
        }


def read_events(
    settings: Settings, records: Sequence[LoggedPrediction]
) -> tuple[int, pa.Table, tuple[datetime, datetime]]:
    """The bronze events ``records`` depend on, at one pinned version, and their window.

    Only events of the records' users and candidate products, stamped from 31
    days before the earliest record up to the latest one, are read.
    """
    table = open_table(settings, TableName.BRONZE_EVENTS, _NO_BRONZE)
    version = int(table.version())
    start = datetime.fromtimestamp(min(r.ts for r in records), UTC) - WARM_UP
    end = datetime.fromtimestamp(max(r.ts for r in records), UTC)
    users = sorted({r.user_id for r in records})
    products = sorted({pid for r in records for pid in r.candidates})
    ts_type = BRONZE_EVENTS.field("event_ts").type
    day, ts = ds.field("event_date"), ds.field("event_ts")
    wanted = (
        (day >= pa.scalar(start.date(), pa.date32()))
        & (day <= pa.scalar(end.date(), pa.date32()))
        & (ts >= pa.scalar(start, ts_type))
        & (ts < pa.scalar(end, ts_type))
        & (ds.field("user_id").isin(users) | ds.field("product_id").isin(products))
    )
    events = table.to_pyarrow_dataset().to_table(columns=_EVENT_COLUMNS, filter=wanted)
    return version, events, (start, end)


def check_parity(
    settings: Settings,
    sample: int,
    *,
    lag_allowance_s: float = 0.0,
    catalog: Catalog | None = None,
    timeout: float = 30.0,
) -> ParityReport:
    """Compare the ``sample`` newest logged predictions with their recomputation from Delta."""
    started = time.perf_counter()
    found = newest_predictions(settings, sample, timeout)
    versions: dict[str, int] = {}
    window = None
    tally = ParityTally()
    if found.records:
        version, events, window = read_events(settings, found.records)
        versions[TableName.BRONZE_EVENTS] = version
        tally = check_records(
            found.records, events, catalog or load_catalog(), lag_allowance_s=lag_allowance_s
        )
    return ParityReport(
        sample=sample,
        lag_allowance_s=lag_allowance_s,
        delta_versions=versions,
        messages=found.messages,
        unparsed=dict(found.unparsed),
        tally=tally,
        window=window,
        seconds=time.perf_counter() - started,
    )


# -- the periodic check of the monitor process -----------------------------------


class ParityLoop:
    """A thread that runs :func:`check_parity` every ``every_s`` seconds and sets the gauges.

    The first check runs as soon as it starts. Live traffic always has events in
    flight, so differences that feature lag of up to ``lag_allowance_s``
    explains are not counted (docs/parity.md). A check that fails is logged and
    counted (``failures``), and the gauges keep their previous values: the loop
    never takes its host process down. ``stop`` waits for a check under way to
    end (at most ``timeout`` seconds).

    >>> loop = ParityLoop(Settings(), every_s=3600, check=lambda settings, n: 1 / 0)
    >>> loop.run_once() is None, loop.checks, loop.failures
    (True, 1, 1)
    """

    def __init__(
        self,
        settings: Settings,
        *,
        every_s: float | None = None,
        sample: int | None = None,
        lag_allowance_s: float | None = None,
        check: Callable[[Settings, int], ParityReport] | None = None,
        ratio_gauge: Gauge = metrics.PARITY_MISMATCH,
        checked_gauge: Gauge = metrics.PARITY_CHECKED,
    ) -> None:
        self.settings = settings
        self.every_s = settings.monitoring.parity_every_s if every_s is None else every_s
        self.sample = settings.monitoring.parity_sample if sample is None else sample
        knob = settings.monitoring.parity_lag_allowance_s
        self.lag_allowance_s = knob if lag_allowance_s is None else lag_allowance_s
        self.check = check or partial(check_parity, lag_allowance_s=self.lag_allowance_s)
        self.ratio_gauge = ratio_gauge
        self.checked_gauge = checked_gauge
        self.checks = 0
        self.failures = 0
        self.last_report: ParityReport | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the parity loop runs already")
        self._thread = threading.Thread(target=self._run, name="parity-loop", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> ParityReport | None:
        """One check; its report, or None when it failed."""
        self.checks += 1
        try:
            report = self.check(self.settings, self.sample)
        except Exception:  # a failed check is reported; the host process goes on
            self.failures += 1
            _LOG.exception("parity check failed (%d of %d checks)", self.failures, self.checks)
            return None
        self.ratio_gauge.set(report.mismatch_ratio)
        self.checked_gauge.set(report.tally.values)
        self.last_report = report
        if not report.clean:
            _LOG.warning(
                "parity: %d of %d values differ: %s", report.tally.mismatched_values,
                report.tally.values, {k: v for k, v in report.tally.by_column.items() if v},
            )  # fmt: skip
        return report

    def _run(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            if self._stop.wait(self.every_s):
                return
