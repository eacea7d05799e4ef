"""The logged reference: what serving actually scored in a training window's validation part.

A model in service changes the traffic it is measured on: the API, not the
shop, picks what is shown, so product counts such as
``product_impressions_1h`` concentrate (PSI 0.9 measured on the demo), and
recency columns shift after any pause. A reference rebuilt by replay
(:class:`~training.replay.ReferenceRequests`) describes the shop-chosen regime
and would keep the monitor's drift alert on after every retrain. So when a
training window holds at least :data:`MIN_LOGGED_REQUESTS` logged requests
(``ml.predictions`` of the settings' profile) with ``ts`` in [validation
start, window end], the reference is a sample of those: their ``features``
are the contract rows exactly as served; the new model re-scores them (the
logged scores are the old model's).

The sample is reproducible: the :data:`~training.replay.REFERENCE_REQUESTS`
requests with the smallest hash of their ``request_id``, whatever the order
the topic returns them in. Reading stays cheap: the read starts at the first
offset the broker dates at or after the validation start (``offsets_for_times``;
Tansu 0.6 answers 0, so there it reads from the start) and stops at each
partition's end; only ``request_id`` and ``ts`` are read of a record (the
head serving writes first, orjson otherwise) until it is among the sampled,
and only sampled records are parsed strictly
(:func:`~training.prediction_records.parse_prediction`).

>>> sampled = LoggedSample.of([], start=0.0, end=1.0)
>>> sampled.found, len(sampled.frame)
(0, 0)
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

import orjson
import pandas as pd
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from infra.errors import StackError
from infra.kafka.reader import (
    offsets_for_times,
    partition_ends,
    read_partitions,
    topic_partitions,
)
from infra.settings import Settings
from training.contract import COLUMNS, SPEC
from training.prediction_records import LoggedPrediction, RecordError, parse_prediction
from training.replay import REFERENCE_REQUESTS, REQUEST

MIN_LOGGED_REQUESTS: Final = 100
"""Below this many logged requests in the validation part, the replayed reference stands in:
a request's user columns are one sample each, and 100 keep the region's JS distance
noise under the alert's threshold (see :data:`~training.replay.REFERENCE_REQUESTS`)."""
READ_TIMEOUT_S: Final = 600.0
REQUEST_ID: Final = "request_id"
# serving's records start with these two fields (orjson keeps the payload's order)
_HEAD: Final = re.compile(rb'\{"request_id":"([^"\\]*)","ts":"([^"\\]*)"')
_DTYPES: Final = {"long": "int64", "double": "float64", "string": "object"}

log = logging.getLogger(__name__)


@dataclass
class LoggedSample:
    """Logged requests of [``start``, ``end``]: how many, and a sample of them as rows.

    ``frame`` holds the contract columns of the sampled requests plus
    ``request`` (0, 1, … in time order), ``event_ts`` and ``request_id``, the
    shape :func:`~training.profiles.build_profile` takes.
    """

    found: int
    records: list[LoggedPrediction]
    unparsed: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(
        cls,
        messages: Iterable[bytes],
        start: float,
        end: float,
        max_requests: int = REFERENCE_REQUESTS,
    ) -> LoggedSample:
        """Sample ``messages`` (prediction-log values): those with ``ts`` in [start, end]."""
        found: set[str] = set()
        kept: list[tuple[int, str, bytes]] = []  # a max-heap of the smallest hashes, negated
        unparsed: Counter[str] = Counter()
        for value in messages:
            head = _head(value)
            if head is None:
                unparsed["malformed_json"] += 1
                continue
            request_id, ts = head
            if not start <= ts <= end or request_id in found:
                continue
            found.add(request_id)
            item = (-_hash(request_id), request_id, value)
            if len(kept) < max_requests:
                heapq.heappush(kept, item)
            elif max_requests > 0 and item > kept[0]:
                heapq.heapreplace(kept, item)
        records = []
        for _, _, value in kept:
            try:
                records.append(parse_prediction(value))
            except RecordError as error:
                unparsed[error.reason] += 1
        records.sort(key=lambda r: (r.ts, r.request_id))
        return cls(len(found), records, unparsed)

    @property
    def frame(self) -> pd.DataFrame:
        return logged_frame(self.records)


def choose_reference(
    sample: LoggedSample, replayed: pd.DataFrame, minimum: int = MIN_LOGGED_REQUESTS
) -> tuple[pd.DataFrame, bool]:
    """The reference rows, and whether they are the logged ones (``minimum`` requests or more)."""
    if len(sample.records) >= minimum:
        return sample.frame, True
    return replayed, False


def logged_frame(records: Sequence[LoggedPrediction]) -> pd.DataFrame:
    """The records' rows, column by column as logged, typed as the contract says."""
    columns: dict[str, list[object]] = {name: [] for name in COLUMNS}
    extra: dict[str, list[object]] = {REQUEST: [], "event_ts": [], REQUEST_ID: []}
    for number, record in enumerate(records):
        for name in COLUMNS:
            columns[name].extend(record.features[name])
        extra[REQUEST].extend([number] * record.rows)
        extra["event_ts"].extend([record.ts] * record.rows)
        extra[REQUEST_ID].extend([record.request_id] * record.rows)
    frame = pd.DataFrame({**columns, **extra})
    dtypes = {name: _DTYPES[kind] for name, kind in SPEC}
    return frame.astype({**dtypes, REQUEST: "int64", "event_ts": "float64", REQUEST_ID: "object"})


def read_logged(
    settings: Settings, start: float, end: float, timeout: float = 30.0
) -> LoggedSample:
    """Sample the settings' ``ml.predictions`` over [start, end] (epoch seconds).

    No topic yet means nothing was logged; a broker that does not answer raises
    :class:`~infra.errors.StackError` (training needs the stack, as it needs MLflow).
    """
    topic = settings.topic(settings.topics.predictions)
    try:
        sample = LoggedSample.of(_values(settings, topic, start, timeout), start, end)
    except (KafkaException, TimeoutError) as error:
        raise StackError(f"cannot read the prediction log {topic}: {error}") from None
    if sample.unparsed:
        log.warning("prediction log %s: records left out of the logged reference: %s", topic,
                    dict(sample.unparsed))  # fmt: skip
    return sample


def _values(settings: Settings, topic: str, start: float, timeout: float) -> Iterator[bytes]:
    """The topic's values from the first offset dated at or after ``start``, to the end."""
    try:
        partitions = topic_partitions(settings, topic, timeout)
    except KafkaException as error:
        if error.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
            return  # nothing was ever logged under this profile
        raise
    ends = partition_ends(
        settings.kafka_bootstrap, [TopicPartition(topic, p) for p in partitions], timeout
    )
    begins = _offsets_at(settings, topic, ends, int(start * 1000), timeout)
    wanted = {p: (begins[p], end) for (_, p), (_, end) in ends.items() if begins[p] < end}
    # the deadline covers the whole read, which may be long on a broker that cannot seek
    for record in read_partitions(settings, topic, wanted, READ_TIMEOUT_S):
        yield record.value


def _offsets_at(
    settings: Settings,
    topic: str,
    ends: dict[tuple[str, int], tuple[int, int]],
    at_ms: int,
    timeout: float,
) -> dict[int, int]:
    """Per partition, the first offset whose broker time is at or after ``at_ms``.

    A record is logged after its request was answered, so its broker time is at
    or after its ``ts``: nothing in range lies before this offset. An answer of
    -1 (no such record) is the partition's end.
    """
    found = offsets_for_times(settings, [TopicPartition(topic, p, at_ms) for _, p in ends], timeout)
    out = {}
    for (_, partition), (low, end) in ends.items():
        offset = found.get(partition, low)
        out[partition] = end if offset < 0 else max(low, offset)
    return out


def _head(value: bytes) -> tuple[str, float] | None:
    """A record's ``request_id`` and ``ts`` (epoch seconds); None when unreadable."""
    match = _HEAD.match(value)
    if match is not None:
        request_id, stamp = match[1].decode(), match[2].decode()
    else:  # not serving's layout: read the whole record
        try:
            payload = orjson.loads(value)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(payload, dict):
            return None
        request_id, stamp = payload.get(REQUEST_ID), payload.get("ts")
        if not isinstance(request_id, str) or not isinstance(stamp, str):
            return None
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return None
    if when.tzinfo is None or not request_id:
        return None
    return request_id, when.timestamp()


def _hash(request_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big")
