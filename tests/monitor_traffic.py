"""Synthetic traffic for the monitor: logged predictions, their impressions and outcomes.

Prediction records are encoded by serving's own :class:`~serving.prediction_log.PredictionRecord`
(the bytes the API logs), from contract rows of :func:`training.contract.assemble_rows`.
Each returned item may be shown (an impression with the request id, seconds
later), then clicked and bought within 30 minutes, or bought too late. The truth
of every shown item is kept, so tests compute what the monitor must report
without the monitor's code.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from bytewax.inputs import AbortExecution, FixedPartitionedSource, StatefulSourcePartition

from flows.kafka_source import KafkaBatch
from infra.plantly.catalog import load_catalog
from infra.plantly.encoding import encode_event
from monitoring import stats
from serving.models import LoadedModel
from serving.prediction_log import PredictionRecord, RowInputs
from serving.schemas import FeatureAges
from training.contract import CATEGORICALS, NUMERIC, RowBatch, assemble_rows
from training.profiles import CategoricalProfile, NumericProfile, ReferenceProfile
from training.ranking import ScoredItem

MODEL = "plant-recommender"
PREDICTIONS = "ml.predictions"
EVENTS = "shop.events"
CATALOG = load_catalog()
PRODUCTS = sorted(CATALOG)
REGIONS = ("US-CA", "US-NY", "GB-ENG", "AU-NSW", "US-FL")
DEVICES = ("mobile", "desktop", "tablet")
LABEL_S = 1800.0


@dataclass
class Request:
    """The truth of one logged request."""

    request_id: str
    ts: float
    version: int
    user_id: str
    columns: dict[str, list[Any]]
    scores: list[float]
    items: list[tuple[str, float]]
    ages: tuple[float, float]


@dataclass
class Shown:
    """The truth of one impression with a request id."""

    request_id: str
    product_id: str
    ts: float
    clicked: bool
    purchased: bool
    score: float | None  # None: not an item of the request (unattributed)


@dataclass
class Traffic:
    requests: list[Request] = field(default_factory=list)
    shown: list[Shown] = field(default_factory=list)
    predictions: list[tuple[bytes, bytes, float]] = field(default_factory=list)  # key, value, ts
    events: list[tuple[str, bytes, float]] = field(default_factory=list)  # user, value, ts


def _score(columns: dict[str, list[Any]], rng: np.random.Generator) -> np.ndarray:
    ctr = np.asarray(columns["product_ctr_24h"], dtype=np.float64)
    clicks = np.asarray(columns["user_clicks_1h"], dtype=np.float64)
    signal = 8.0 * ctr + 0.2 * clicks - 3.5 + rng.normal(0.0, 0.5, len(ctr))
    scores: np.ndarray = 1.0 / (1.0 + np.exp(-signal))
    return scores


def prediction_bytes(
    request: Request, region: str, device: str, k: int, model: str = MODEL
) -> bytes:
    """The record as :class:`PredictionLog` writes it."""
    ranked = sorted(
        zip(request.columns["product_id"], request.scores, strict=True), key=lambda x: -x[1]
    )
    candidates = list(request.columns["product_id"])
    record = PredictionRecord(
        request_id=request.request_id, ts=request.ts, route="recommendations",
        user_id=request.user_id, region=region, device=device, k=k,
        model=LoadedModel(model, request.version, "champion", None),  # type: ignore[arg-type]
        items=[ScoredItem(pid, s) for pid, s in request.items],
        ranked=[ScoredItem(pid, s) for pid, s in ranked], removed=0,
        rows=RowBatch(request.columns), inputs=RowInputs({}, {}, candidates),
        ages=FeatureAges(
            user={"clicks_1h": request.ages[0], "impressions_1h": None},
            product={"ctr_24h": request.ages[1]},
        ),
        latency_ms=1.5,
    )  # fmt: skip
    return orjson.dumps(record.payload(None), option=orjson.OPT_SERIALIZE_NUMPY)


def make_request(
    rng: random.Random, nrng: np.random.Generator, rid: str, ts: float, version: int,
    candidates: int = 50, k: int = 10, model: str = MODEL,
) -> tuple[Request, bytes]:  # fmt: skip
    user_id = f"u-{rng.randrange(60):03d}"
    region, device = rng.choice(REGIONS), rng.choice(DEVICES)
    user = {"impressions_1h": rng.randrange(20), "clicks_1h": rng.randrange(6),
            "ctr_7d": rng.random() * 0.3, "spend_30d": round(rng.random() * 90, 2)}  # fmt: skip
    picks = rng.sample(PRODUCTS, candidates)
    products = [
        (pid, {"impressions_1h": rng.randrange(50), "ctr_24h": rng.random() * 0.4}) for pid in picks
    ]
    columns = assemble_rows(user_id, region, device, user, products, CATALOG, as_of=ts)
    scores = _score(columns, nrng).tolist()
    order = sorted(range(candidates), key=lambda i: -scores[i])[:k]
    items = [(picks[i], scores[i]) for i in order]
    ages = (rng.uniform(0.0, 600.0), rng.uniform(0.0, 120.0))
    request = Request(rid, ts, version, user_id, columns, scores, items, ages)
    return request, prediction_bytes(request, region, device, k, model)


def _event(n: int, kind: str, ts: float, user: str, pid: str, rid: str | None = None) -> bytes:
    price = CATALOG[pid].price
    quantity = 1 if kind == "purchase" else None
    return encode_event(
        f"e-{n}", kind, ts, user, pid, "s-1", "US-CA", "mobile", price, quantity, rid
    )


class _Events:
    def __init__(self, traffic: Traffic) -> None:
        self.traffic = traffic
        self.count = 0

    def add(self, kind: str, ts: float, user: str, pid: str, rid: str | None = None) -> None:
        self.count += 1
        self.traffic.events.append((user, _event(self.count, kind, ts, user, pid, rid), ts))


def _outcomes(rng: random.Random, events: _Events, request: Request) -> list[Shown]:
    shown = []
    for pid, score in request.items[: rng.randint(0, len(request.items))]:
        roll = rng.random()
        t = request.ts + rng.uniform(0.5, 5.0)
        if roll < 0.02:
            t = float(math.ceil(t))  # whole seconds: "exactly 30 minutes later" is exact
        events.add("impression", t, request.user_id, pid, request.request_id)
        clicked = rng.random() < 0.3
        if clicked:
            events.add("click", t + rng.uniform(5.0, 120.0), request.user_id, pid)
        purchased = roll < 0.15
        if purchased:
            at = t + (LABEL_S if roll < 0.02 else rng.uniform(60.0, 1700.0))  # the edge counts
            events.add("purchase", at, request.user_id, pid)
        elif roll < 0.22:  # bought, but after the label window
            events.add("purchase", t + LABEL_S + rng.uniform(1.0, 900.0), request.user_id, pid)
        shown.append(Shown(request.request_id, pid, t, clicked, purchased, score))
    if rng.random() < 0.1:  # a plant the request did not return: not attributed
        others = [p for p in PRODUCTS if p not in dict(request.items)]
        pid = rng.choice(others)
        events.add("impression", request.ts + 1.0, request.user_id, pid, request.request_id)
        shown.append(Shown(request.request_id, pid, request.ts + 1.0, False, False, None))
    return shown


def make_traffic(
    start: float, windows: int, per_window: int, *, window_s: float = 60.0, seed: int = 5,
    versions: tuple[int, ...] = (3, 3, 3, 4), candidates: int = 50, model: str = MODEL,
) -> Traffic:  # fmt: skip
    """``per_window`` requests in each of ``windows`` windows from ``start``, and outcomes."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    traffic = Traffic()
    events = _Events(traffic)
    total = windows * per_window
    for i in range(total):
        ts = start + (i + 0.5) * window_s * windows / total
        request, raw = make_request(
            rng,
            nrng,
            f"r-{seed}-{i:05d}",
            ts,
            versions[i % len(versions)],
            candidates,
            model=model,
        )
        traffic.requests.append(request)
        traffic.predictions.append((request.user_id.encode(), raw, ts))
        traffic.shown += _outcomes(rng, events, request)
        if rng.random() < 0.2:  # the shop's own picks: no request id, only time moves
            events.add("impression", ts + 2.0, request.user_id, rng.choice(PRODUCTS))
    return traffic


def batches(
    messages: list[tuple[bytes | None, bytes]], topic: str, partitions: int, size: int,
    part_of: Any = None,
) -> dict[str, list[KafkaBatch]]:  # fmt: skip
    """Messages spread over partitions (``part_of(index, key)``, else round robin), batched."""
    parts: dict[int, list[KafkaBatch]] = defaultdict(list)
    offsets = [0] * partitions
    for index, (key, value) in enumerate(messages):
        p = index % partitions if part_of is None else part_of(index, key)
        if not parts[p] or len(parts[p][-1]) == size:
            parts[p].append(KafkaBatch(topic, p))
        batch = parts[p][-1]
        batch.offsets.append(offsets[p])
        batch.keys.append(key)
        batch.values.append(value)
        batch.timestamps.append(0.0)
        offsets[p] += 1
    return {f"{p}-{topic}": parts[p] for p in range(partitions)}


def user_partition(key: bytes | None, partitions: int) -> int:
    return sum(key or b"") % partitions


def reference_profile(seed: int = 11, rows: int = 4_000, shift: float = 0.0) -> ReferenceProfile:
    """A profile of traffic like :func:`make_traffic`'s (``shift`` moves product CTRs)."""
    rng, nrng = random.Random(seed), np.random.default_rng(seed)
    columns: dict[str, list[Any]] = defaultdict(list)
    scores: list[float] = []
    for i in range(rows // 50):
        request, _ = make_request(rng, nrng, f"ref-{i}", 0.0, 1)
        for name in (*NUMERIC, *CATEGORICALS):
            values = request.columns[name]
            columns[name] += [v + shift for v in values] if name == "product_ctr_24h" else values
        scores += request.scores
    return ReferenceProfile(
        rows=rows, window_start=datetime(2026, 11, 1, tzinfo=UTC),
        window_end=datetime(2026, 11, 8, tzinfo=UTC),
        numeric={n: NumericProfile.of(np.asarray(columns[n], float)) for n in NUMERIC},
        categorical={
            n: CategoricalProfile(counts=dict(sorted(_counts(columns[n]).items())))
            for n in CATEGORICALS
        },
        score=NumericProfile.of(np.asarray(scores)), positive_rate=0.04, roc_auc=0.71,
        estimated_roc_auc=0.7,
    )  # fmt: skip


def _counts(values: list[Any]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for value in values:
        out[str(value)] += 1
    return dict(out)


def window_of(ts: float, window_s: float) -> float:
    return math.floor(ts / window_s) * window_s


class _ListPartition(StatefulSourcePartition[KafkaBatch, int]):
    def __init__(self, source: BatchListSource, batches: list[KafkaBatch], start: int) -> None:
        self.source, self.batches, self.position = source, batches, start

    def next_batch(self) -> list[KafkaBatch]:
        source = self.source
        if source.abort_after is not None and source.emitted >= source.abort_after:
            source.abort_after = None  # once: the resumed run goes on
            raise AbortExecution()
        if self.position >= len(self.batches):
            raise StopIteration()
        source.emitted += 1
        self.position += 1
        return [self.batches[self.position - 1]]

    def snapshot(self) -> int:
        return self.position


class BatchListSource(FixedPartitionedSource[KafkaBatch, int]):
    """Kafka partitions as lists of batches; ``abort_after`` batches, it aborts once."""

    def __init__(self, parts: dict[str, list[KafkaBatch]], abort_after: int | None = None) -> None:
        self.parts = parts
        self.abort_after = abort_after
        self.emitted = 0

    def list_parts(self) -> list[str]:
        return sorted(self.parts)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _ListPartition:
        return _ListPartition(self, self.parts[for_part], resume_state or 0)


def iso(ts: float) -> str:
    """The window bounds as ``ml.monitor`` writes them."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def by_window(traffic: Traffic, window_s: float) -> dict[tuple[int, str], list[Request]]:
    """The requests of each (version, window start)."""
    windows: dict[tuple[int, str], list[Request]] = defaultdict(list)
    for request in traffic.requests:
        windows[(request.version, iso(window_of(request.ts, window_s)))].append(request)
    return windows


def expected_outcomes(traffic: Traffic, window_s: float) -> dict[tuple[int, str], dict[str, float]]:
    """By brute force from the events: every attributed impression and its 30 minutes."""
    requests = {r.request_id: r for r in traffic.requests}
    actions: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for user, raw, ts in traffic.events:
        body = orjson.loads(raw)
        actions[(body["event_type"], user, body["product_id"])].append(round(ts, 3))
    found: dict[tuple[int, str], list[tuple[bool, bool, float]]] = defaultdict(list)
    for shown in traffic.shown:
        if shown.score is None:
            continue
        request = requests[shown.request_id]
        t = round(shown.ts, 3)
        clicked, bought = (
            any(t <= a <= t + LABEL_S for a in actions[(kind, request.user_id, shown.product_id)])
            for kind in ("click", "purchase")
        )
        key = (request.version, iso(window_of(request.ts, window_s)))
        found[key].append((clicked, bought, shown.score))
    out = {}
    for key, items in found.items():
        labels = np.array([p for _, p, _ in items], dtype=float)
        scores = np.array([s for _, _, s in items])
        out[key] = {
            "impressions": len(items), "labelled": len(items),
            "clicks": sum(c for c, _, _ in items), "purchases": labels.sum(),
            "roc_auc": stats.roc_auc(labels, scores), "log_loss": stats.log_loss(labels, scores),
        }  # fmt: skip
    return out


def observed(columns: list[dict[str, list[Any]]], name: str) -> list[Any]:
    """A column's observations over requests: a shopper or context column (region, device,
    ``user_*``) once per request, a candidate's column once per row."""
    if name in ("region", "device") or name.startswith("user_"):
        return [c[name][0] for c in columns if c[name]]
    return [value for c in columns for value in c[name]]
