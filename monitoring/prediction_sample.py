"""The newest logged predictions of ``ml.predictions``, parsed strictly for the parity check.

:func:`newest_predictions` reads only the tail of each partition (the last
``n`` messages, by assignment: no consumer-group join), keeps the ``n``
newest by broker timestamp (the moment the API logged them) and parses those
with :func:`parse_prediction`. A record that does not parse is counted by
reason, never fatal: a parity check must not be stopped by the thing it may
be there to find.

Parsing is strict: JSON types must match the contract's column types exactly
(a count is an integer, ``true`` is not 1, ``null`` is not a number), every
contract column must be there with one value per candidate, and ``ts`` must
carry its zone.

>>> import orjson
>>> from training.contract import COLUMNS
>>> record = {"request_id": "r-1", "ts": "2026-12-02T10:00:00.250Z", "user_id": "u-1",
...           "region": "US-CA", "device": "mobile", "candidates": [],
...           "features": {name: [] for name in COLUMNS}}
>>> parsed = parse_prediction(orjson.dumps(record))
>>> parsed.ts, parsed.rows
(1796205600.25, 0)
>>> parse_prediction(orjson.dumps({**record, "ts": "2026-12-02T10:00:00"}))
Traceback (most recent call last):
...
monitoring.prediction_sample.RecordError: invalid_record: ts: Input should have timezone info
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr
from pydantic import ValidationError as PydanticValidationError

from infra.errors import TributaryError
from infra.kafka.reader import partition_ends
from infra.settings import Settings
from training.contract import COLUMNS, SPEC

_KINDS: Final = dict(SPEC)
_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "long": (int,),
    "double": (float, int),  # a double written without a fraction is still one
}


class RecordError(TributaryError):
    """A logged prediction the parity check cannot read; ``reason`` is for counting."""

    code = "invalid_prediction_record"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class PredictionSampleError(TributaryError):
    """``ml.predictions`` could not be read (missing topic, broker down)."""

    code = "prediction_log_unreadable"
    http_status = 503


class _Payload(BaseModel):
    """The fields of a prediction-log message that parity reads; the others are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    request_id: StrictStr = Field(min_length=1)
    ts: AwareDatetime
    user_id: StrictStr = Field(min_length=1)
    region: StrictStr
    device: StrictStr
    candidates: list[StrictStr]
    # values are checked against the column's type below: ~10x faster than a pydantic union
    features: dict[str, list[Any]]


@dataclass(frozen=True, slots=True)
class LoggedPrediction:
    """One answered request as logged: the contract rows the model scored, column by column."""

    request_id: str
    ts: float  # epoch seconds, as logged (milliseconds)
    user_id: str
    region: str
    device: str
    candidates: list[str]  # row order
    features: dict[str, list[object]]  # every contract column, one value per candidate

    @property
    def rows(self) -> int:
        return len(self.candidates)


def parse_prediction(value: bytes) -> LoggedPrediction:
    """A prediction-log message, checked against the feature contract; RecordError if not."""
    try:
        payload = _Payload.model_validate_json(value)
    except PydanticValidationError as error:
        raise RecordError(_reason(error), _first_error(error)) from None
    _check_columns(payload)
    return LoggedPrediction(
        request_id=payload.request_id,
        ts=payload.ts.timestamp(),
        user_id=payload.user_id,
        region=payload.region,
        device=payload.device,
        candidates=payload.candidates,
        features={name: list(payload.features[name]) for name in COLUMNS},
    )


def _reason(error: PydanticValidationError) -> str:
    kinds = {detail["type"] for detail in error.errors()}
    return (
        "malformed_json" if "json_invalid" in kinds or "model_type" in kinds else "invalid_record"
    )


def _first_error(error: PydanticValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"][:2]) or "record"
    return f"{where}: {first['msg']}"


def _check_columns(payload: _Payload) -> None:
    missing = [name for name in COLUMNS if name not in payload.features]
    unknown = sorted(set(payload.features) - set(COLUMNS))
    if missing or unknown:
        raise RecordError(
            "contract_mismatch", f"missing columns {missing[:3]}, unknown columns {unknown[:3]}"
        )
    rows = len(payload.candidates)
    for name, values in payload.features.items():
        if len(values) != rows:
            raise RecordError(
                "contract_mismatch", f"{name} has {len(values)} values for {rows} candidates"
            )
        allowed = _TYPES[_KINDS[name]]
        # exact types: bool is an int to isinstance, and true is not a count
        if not all(type(value) in allowed for value in values):
            raise RecordError(
                "contract_mismatch", f"{name} holds a value not of type {_KINDS[name]}"
            )


# -- reading the tail of the topic -------------------------------------------------


@dataclass
class PredictionSample:
    """The newest logged predictions, and how many of the newest messages did not parse."""

    records: list[LoggedPrediction]
    unparsed: Counter[str] = field(default_factory=Counter)
    messages: int = 0  # messages selected: records plus unparsed


@dataclass(frozen=True, slots=True)
class _Tail:
    timestamp_ms: int
    partition: int
    offset: int
    value: bytes


def newest_predictions(settings: Settings, n: int, timeout: float = 30.0) -> PredictionSample:
    """The ``n`` newest messages of ``ml.predictions`` (all when fewer), parsed."""
    topic = settings.topic(settings.topics.predictions)
    tail = _read_tail(settings.kafka_bootstrap, topic, n, timeout)
    newest = sorted(tail, key=lambda m: (m.timestamp_ms, m.partition, m.offset))[-n:]
    sample = PredictionSample(records=[], messages=len(newest))
    for message in newest:
        try:
            sample.records.append(parse_prediction(message.value))
        except RecordError as error:
            sample.unparsed[error.reason] += 1
    return sample


def _read_tail(bootstrap: str, topic: str, n: int, timeout: float) -> list[_Tail]:
    """The last ``n`` messages of every partition of ``topic``."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            # assigned, never joined: a unique id stays clear of real groups' offsets
            "group.id": f"tributary-parity-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise PredictionSampleError(f"cannot read topic {topic}: {metadata and metadata.error}")
        parts = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
        ends = partition_ends(bootstrap, parts, timeout)
        starts = {p: max(low, end - n) for (_, p), (low, end) in ends.items()}
        wanted = {
            p: ends[(topic, p)][1] for p, start in starts.items() if start < ends[(topic, p)][1]
        }
        if not wanted:
            return []
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in wanted])
        return _consume(consumer, wanted, timeout)
    except KafkaException as error:
        raise PredictionSampleError(f"cannot read topic {topic}: {error}") from None
    finally:
        consumer.close()


def _consume(consumer: Consumer, ends: dict[int, int], timeout: float) -> list[_Tail]:
    """Messages until every partition reached the end it had when the read began."""
    deadline = time.monotonic() + timeout
    out: list[_Tail] = []
    while ends:
        batch = consumer.consume(10_000, timeout=0.1)
        if not batch and time.monotonic() > deadline:
            raise PredictionSampleError(f"partitions {sorted(ends)} not read to their end")
        for message in batch:
            error = message.error()
            partition = message.partition() or 0
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(error)
                ends.pop(partition, None)
                continue
            out.append(_tail(message, partition))
            if out[-1].offset >= ends.get(partition, 0) - 1:
                ends.pop(partition, None)
    return out


def _tail(message: Message, partition: int) -> _Tail:
    kind, timestamp_ms = message.timestamp()
    return _Tail(
        timestamp_ms=-1 if kind == TIMESTAMP_NOT_AVAILABLE else timestamp_ms,
        partition=partition,
        offset=message.offset() or 0,
        value=message.value() or b"",
    )
