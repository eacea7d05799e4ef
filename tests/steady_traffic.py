"""Weeks of steady plantly.shop traffic in event time, with trained models as the storefront.

One :class:`~infra.plantly.simulator.ShopSimulator` run in history mode covers
the whole span at a constant rate. Model versions take over what sessions show
at :attr:`SteadyConfig.stages`: by default version 1, trained on the shop's own
picks of the first ``train_days``, from the warm-up on, and version 2, trained
on the ``train_days`` before the replay week, for the week. Each version is
trained at the first session of its stage, on the events before it, exactly as
``tributary train`` does (:func:`training.dataset.build_rows` with
:class:`~training.replay.ReferenceRequests`, :func:`~training.dataset.time_split`,
:func:`~training.river_model.fit_river`, :func:`~training.profiles.build_profile`).
:class:`ReplayStorefront` then answers every ``ask_every``-th session as the
prediction API would: every catalog product allowed in the shopper's region,
with the user's and the products' features as of the session start (every
event stamped strictly before it applied, from a time-ordered buffer), ranked
by :func:`training.ranking.recommend`; in the replay week the answer is logged
as the bytes :class:`~serving.prediction_log.PredictionRecord` encodes. The
session's impressions of the returned plants carry the answer's ``request_id``.

Why a model before the training window: what a model shows changes what the
features count (impressions and conversions of the products it picks, the CTR
of the shoppers it serves). A reference made from traffic the shop picked and a
week a model picked differ by that alone (``bootstrap="none"``, a first
deployment): steady traffic is traffic a model has picked for longer than the
longest feature window (30 days) before the reference is sampled.

Nothing is kept of the replay week: its predictions and shop events go, in
event-time order, to a :class:`TrafficSink` as they become final.
"""

from __future__ import annotations

import heapq
import sys
import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from flows.features.definitions import PRODUCT_VIEW, USER_VIEW, FeatureValue
from flows.features.tiles import EntityTiles
from infra.contracts.tables import BRONZE_EVENTS
from infra.plantly.catalog import Catalog, load_catalog
from infra.plantly.compliance import allowed_candidates
from infra.plantly.simulator import ShopSimulator, SimulationConfig
from serving.models import LoadedModel
from serving.prediction_log import PredictionRecord, RowInputs
from serving.schemas import FeatureAges
from training.dataset import WARM_UP, build_rows, time_split
from training.metrics import roc_auc
from training.profiles import ReferenceProfile, build_profile
from training.pyfunc import RecommenderModel
from training.ranking import recommend
from training.replay import REFERENCE_REQUESTS, ReferenceRequests
from training.river_model import fit_river

DAY_S = 86_400.0
_TIMESTAMP = pa.timestamp("us", tz="UTC")
_CHUNK = 100_000  # history rows per Arrow batch: Python lists of millions of rows cost GBs


@dataclass(frozen=True)
class SteadyConfig:
    """The simulated weeks, at a constant rate.

    100,000 events a day is 7 times the demo's history (100,000 events in 7 days,
    5,000 users): ~7,800 requests a day once a model serves.
    """

    events_per_day: int = 100_000
    users: int = 5_000
    warm_days: float = 30.0
    train_days: float = 7.0
    replay_days: float = 7.0
    seed: int = 42
    anchor: datetime = datetime(2026, 6, 1, tzinfo=UTC)  # the end of the replay week
    # simulated past the week, so the week's last sessions keep their outcomes (the
    # simulator stamps nothing after its end) and the monitor sees time move on
    tail_s: float = 3600.0
    ask_every: int = 1  # every n-th session asks the storefront (once a model serves)
    # Who picks what sessions show before the replay week: "warm-up", a first model
    # (trained on train_days of the shop's own picks simulated before the warm-up)
    # from the warm-up on, so every feature the reference and the replay read looks
    # back on model-picked traffic only: the steady state after a retrain;
    # "training", that model from the training window on; "none", the shop until the
    # replay (a first deployment, as in the demo).
    bootstrap: Literal["warm-up", "training", "none"] = "warm-up"
    reference_requests: int = REFERENCE_REQUESTS
    validation_fraction: float = 0.2
    model_name: str = "plant-recommender"

    @property
    def days(self) -> float:
        lead = self.train_days if self.bootstrap == "warm-up" else 0.0
        return lead + self.warm_days + self.train_days + self.replay_days

    @property
    def replay_start(self) -> float:
        return self.anchor.timestamp() - self.replay_days * DAY_S

    @property
    def train_start(self) -> float:
        return self.replay_start - self.train_days * DAY_S

    @property
    def replay_end(self) -> float:
        return self.anchor.timestamp()

    @property
    def stages(self) -> tuple[float, ...]:
        """When each model version (1, 2, ...) starts to serve; the last serves the replay."""
        if self.bootstrap == "warm-up":
            return (self.train_start - self.warm_days * DAY_S, self.replay_start)
        if self.bootstrap == "training":
            return (self.train_start, self.replay_start)
        return (self.replay_start,)

    def simulation(self) -> SimulationConfig:
        days = self.days + self.tail_s / DAY_S
        return SimulationConfig(
            events=round(self.events_per_day * days), seed=self.seed, history_days=days,
            anchor=self.anchor + timedelta(seconds=self.tail_s), users=self.users,
        )  # fmt: skip


class TrafficSink(Protocol):
    """Where the replay week goes, in event-time order."""

    def start(self, trained: Trained) -> None:
        """The replay's model is trained: its predictions follow."""

    def prediction(self, key: bytes, value: bytes, ts: float) -> None: ...

    def event(self, key: bytes, value: bytes, ts: float) -> None: ...


@dataclass
class Trained:
    """What a training window gave: the served model and its reference profile."""

    version: int
    model: RecommenderModel
    profile: ReferenceProfile
    rows: int
    train_rows: int
    validation_rows: int
    label_rate: float
    valid_auc: float
    reference_requests: int
    seconds: float = 0.0


def train_model(
    config: SteadyConfig, history: pa.Table, catalog: Catalog, version: int, end: float
) -> Trained:
    """``tributary train --kind river`` on the ``train_days`` before ``end``, without MLflow."""
    start = end - config.train_days * DAY_S
    # what read_events reads: whole days from 31 days before the window
    first = (start - WARM_UP.total_seconds()) // DAY_S * DAY_S
    since = pc.greater_equal(history["event_ts"], pa.scalar(round(first * 1e6), _TIMESTAMP))
    requests = ReferenceRequests(config.validation_fraction, config.reference_requests)
    frame = build_rows(history.filter(since), start, end, catalog, requests=requests)
    train_rows, valid_rows = time_split(frame, config.validation_fraction)
    model = RecommenderModel(fit_river(train_rows))
    scores = model.score_frame(valid_rows)["score"].to_numpy()
    reference = requests.frame
    reference_scores = model.score_frame(reference)["score"].to_numpy() if len(reference) else []
    window = (datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC))
    profile = build_profile(reference, reference_scores, valid_rows, scores, window=window)
    labels = valid_rows["label"].to_numpy()
    return Trained(
        version, model, profile, len(frame), len(train_rows), len(valid_rows),
        float(frame["label"].mean()), roc_auc(labels, scores), profile.requests,
    )  # fmt: skip


class _History:
    """The events before the replay, as ``bronze/events`` rows in Arrow batches."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.columns: dict[str, list[Any]] = defaultdict(list)
        self.rows = 0

    def add(self, body: dict[str, Any], ts: float) -> None:
        columns = self.columns
        for name in ("event_id", "event_type", "user_id", "product_id", "region", "device",
                     "session_id", "price", "quantity"):  # fmt: skip
            columns[name].append(body.get(name))
        columns["event_ts"].append(round(ts * 1e6))
        columns["source_offset"].append(self.rows)
        self.rows += 1
        if len(columns["event_ts"]) >= _CHUNK:
            self._flush()

    def _flush(self) -> None:
        data = self.columns
        if not data:
            return
        stamps = pa.array(data.pop("event_ts"), pa.int64()).cast(_TIMESTAMP)
        data["event_ts"] = stamps
        data["source_partition"] = [0] * len(stamps)
        schema = pa.schema([BRONZE_EVENTS.field(name) for name in data])
        self.batches.append(pa.RecordBatch.from_pydict(data, schema=schema))
        self.columns = defaultdict(list)

    def table(self) -> pa.Table:
        self._flush()
        return pa.Table.from_batches(self.batches)


class _Clocked(ShopSimulator):
    """The simulator, telling its storefront when the session it asks about starts."""

    session_ts = 0.0

    def _session_start(self, fraction: float) -> float:
        self.session_ts = super()._session_start(fraction)
        return self.session_ts


@dataclass(order=True)
class _Pending:
    ts: float
    seq: int
    kind: str = field(compare=False)
    user_id: str = field(compare=False)
    product_id: str = field(compare=False)
    price: float | None = field(compare=False)
    quantity: int | None = field(compare=False)
    raw: bytes = field(compare=False)


@dataclass
class ReplayStats:
    """Counts of the run, for the report."""

    events: int = 0
    history_events: int = 0
    replay_events: int = 0
    sessions: int = 0
    requests: int = 0  # logged in the replay week
    shown: int = 0
    tail_requests: int = 0  # logged after it (the tail of the simulation)
    request_seconds: float = 0.0


class ReplayStorefront:
    """The prediction API, in process and in event time (module doc)."""

    def __init__(
        self, config: SteadyConfig, catalog: Catalog, sink: TrafficSink, clock: Callable[[], float]
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.sink = sink
        self.clock = clock  # the start of the session asking
        self.users: dict[str, EntityTiles] = defaultdict(EntityTiles)
        self.products: dict[str, EntityTiles] = defaultdict(EntityTiles)
        self.changes: dict[str, int] = defaultdict(int)  # events applied per product
        self.history: _History | None = _History()
        self.models: list[Trained] = []  # version n is models[n - 1]
        self.stats = ReplayStats()
        self._pending: list[_Pending] = []
        self._asked = 0  # sessions a model served, before and in the replay week
        self._requests = 0
        self._allowed: dict[str, list[str]] = {}
        self._read: dict[str, tuple[int, int, dict[str, FeatureValue]]] = {}
        self._sources: dict[str, tuple[int, list[tuple[str, float | None]]]] = {}

    # -- the shop's events ------------------------------------------------------

    def receive(self, raw: bytes) -> None:
        """One ``shop.events`` message of the simulator, in the order it was produced."""
        body = orjson.loads(raw)
        ts = datetime.fromisoformat(body["event_ts"]).timestamp()
        replay = ts >= self.config.replay_start
        if not replay and self.history is not None:
            self.history.add(body, ts)
        self.stats.events += 1
        self.stats.replay_events += replay
        self.stats.history_events += not replay
        pending = _Pending(
            ts, self.stats.events, body["event_type"], sys.intern(body["user_id"]),
            sys.intern(body["product_id"]), body.get("price"), body.get("quantity"),
            raw if replay else b"",
        )  # fmt: skip
        heapq.heappush(self._pending, pending)

    def finish(self) -> None:
        """The simulation ended: what is still buffered is final."""
        self._release(float("inf"))

    def _release(self, before: float) -> None:
        """Apply every buffered event stamped before ``before``; replay events to the sink."""
        pending, users, products = self._pending, self.users, self.products
        while pending and pending[0].ts < before:
            event = heapq.heappop(pending)
            users[event.user_id].add(event.kind, event.ts, event.price, event.quantity)
            products[event.product_id].add(event.kind, event.ts, event.price, event.quantity)
            self.changes[event.product_id] += 1
            if event.raw:
                self.sink.event(event.user_id.encode(), event.raw, event.ts)

    # -- the storefront ----------------------------------------------------------

    def show(self, user_id: str, region: str, device: str, count: int) -> list[tuple[str, str]]:
        t = self.clock()
        self._release(t)
        stage = bisect_right(self.config.stages, t)  # the version serving now, 0: none yet
        if stage == 0:
            return []  # the shop picks until a model serves
        while len(self.models) < stage:
            self.models.append(self._train(len(self.models) + 1))
        replay = t >= self.config.replay_start
        self.stats.sessions += replay and t < self.config.replay_end
        self._asked += 1
        if (self._asked - 1) % self.config.ask_every:
            return []
        started = time.perf_counter()
        picks = self._answer(user_id, region, device, count, t, replay)
        if replay:
            self.stats.request_seconds += time.perf_counter() - started
        return picks

    @property
    def trained(self) -> Trained | None:
        """The model serving the replay week, once trained."""
        last = len(self.config.stages)
        return self.models[-1] if len(self.models) == last else None

    def _train(self, version: int) -> Trained:
        assert self.history is not None
        started = time.perf_counter()
        history = self.history.table()
        final = version == len(self.config.stages)
        if final:
            self.history = None  # its memory goes with it
        end = self.config.stages[version - 1]
        trained = train_model(self.config, history, self.catalog, version, end)
        trained.seconds = time.perf_counter() - started
        if final:
            self.sink.start(trained)
        return trained

    def _answer(
        self, user_id: str, region: str, device: str, count: int, t: float, log: bool
    ) -> list[tuple[str, str]]:
        """What the API answers; logged as the API logs it when ``log``."""
        serving = self.models[-1]
        allowed = self._allowed.get(region)
        if allowed is None:
            allowed = self._allowed[region] = allowed_candidates(self.catalog, region, self.catalog)
        tiles = self.users.get(user_id)
        user = tiles.features(USER_VIEW, t) if tiles is not None else {}
        products = {product_id: self._product(product_id, t) for product_id in allowed}
        result = recommend(
            serving.model, self.catalog, user_id=user_id, region=region, device=device,
            candidates=allowed, user_features=user, product_features=products, as_of=t,
            k=len(allowed),
        )  # fmt: skip
        self._requests += 1
        request_id = f"r-{serving.version}-{self._requests:08d}"
        if log:
            user_ages = (
                tiles.ages(USER_VIEW, t) if tiles is not None else dict.fromkeys(USER_VIEW.names)
            )
            record = PredictionRecord(
                request_id=request_id, ts=t, route="recommendations", user_id=user_id,
                region=region, device=device, k=count,
                model=LoadedModel(self.config.model_name, serving.version, "champion",
                                  serving.model),
                items=result.items[:count], ranked=result.items,
                removed=len(self.catalog) - len(allowed), rows=result.rows,
                inputs=RowInputs(user, products, allowed),
                ages=FeatureAges(user=user_ages, product=self._stalest(allowed, t)),
                latency_ms=0.0,
            )  # fmt: skip
            value = orjson.dumps(record.payload(None), option=orjson.OPT_SERIALIZE_NUMPY)
            self.sink.prediction(user_id.encode(), value, t)
            self._count(t, min(count, len(result.items)))
        return [(item.product_id, request_id) for item in result.items[:count]]

    def _count(self, t: float, shown: int) -> None:
        if t >= self.config.replay_end:
            self.stats.tail_requests += 1
        else:
            self.stats.requests += 1
            self.stats.shown += shown

    def _product(self, product_id: str, t: float) -> dict[str, FeatureValue]:
        """A product's features as of ``t``; they change only with its events or the minute."""
        tiles = self.products.get(product_id)
        if tiles is None:
            return {}
        minute, changes = int(t) // 60, self.changes[product_id]
        last = self._read.get(product_id)
        if last is not None and last[0] == minute and last[1] == changes:
            return last[2]
        features = tiles.features(PRODUCT_VIEW, t)
        self._read[product_id] = (minute, changes, features)
        return features

    def _stalest(self, allowed: list[str], t: float) -> dict[str, float | None]:
        """Per product feature, the largest age over the candidates (serving's ``stalest``)."""
        oldest: dict[str, float | None] = dict.fromkeys(PRODUCT_VIEW.names)
        for product_id in allowed:
            tiles = self.products.get(product_id)
            if tiles is None:
                continue
            changes = self.changes[product_id]
            cached = self._sources.get(product_id)
            if cached is None or cached[0] != changes:
                cached = self._sources[product_id] = (changes, tiles.age_sources(PRODUCT_VIEW))
            for name, source in cached[1]:
                held = oldest[name]
                if source is not None and (held is None or source < held):
                    oldest[name] = source
        return {name: None if ts is None else t - ts for name, ts in oldest.items()}


def simulate(
    config: SteadyConfig, sink: TrafficSink, catalog: Catalog | None = None
) -> ReplayStorefront:
    """Run the whole simulation; the storefront holds the model, the profile and the counts."""
    catalog = catalog or load_catalog()
    simulator = _Clocked(config.simulation(), catalog)
    front = ReplayStorefront(config, catalog, sink, lambda: simulator.session_ts)
    simulator.storefront = front
    for message in simulator.messages():
        if message.topic == "events":
            front.receive(message.value)
    front.finish()
    return front
