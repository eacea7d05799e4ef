"""What the monitor reads: logged predictions, checked strictly, and the outcome events.

A ``ml.predictions`` message (:mod:`serving.prediction_log` writes it) is parsed
with orjson and checked by hand, field by field, for what the monitor uses:
``request_id``, ``ts`` (RFC 3339 with a zone, at most 5 minutes ahead),
``user_id``, ``model {name, version}``, ``items`` (the returned, ranked
``{product_id, score}``), ``candidates``, ``scores`` (one per candidate),
``features`` (every contract column the monitor profiles, one value per
candidate) and ``feature_ages``. Other fields are not the monitor's business
and are ignored, so the log may grow fields without breaking it. A refusal is
an :class:`~infra.contracts.Rejection` with one of the contract's reasons.

The numbers of the feature columns and the scores are checked per *group* of
records (one model version, one window), not per value: the columns of the
whole group are concatenated and converted by numpy once, which must yield a
finite integer or float array; only when it does not are the group's records
checked one by one to find the culprits. That keeps a 50-candidate record's
~1,000 numbers off the Python interpreter's per-value path. One gap is
accepted for it: numpy reads a JSON boolean among numbers as 0 or 1, so only
a column whose first value is a boolean (how a serializer writing booleans
shows) is refused.

>>> raw = (b'{"request_id": "r1", "ts": "2026-12-02T10:00:00Z", "user_id": "u1",'
...        b' "model": {"name": "m", "version": 3}, "items": [], "candidates": [],'
...        b' "scores": [], "features": {}, "feature_ages": {"user": {}, "product": {}}}')
>>> refused = parse_prediction(raw, model_name="m", now=2e9)
>>> refused.reason.value, refused.detail
('missing_field', 'features.pet_safe: missing')
"""

from __future__ import annotations

import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any, Final, NamedTuple

import numpy as np
import orjson

from infra.contracts import Rejection, RejectionReason, ShopEvent
from training.contract import CATEGORICALS, NUMERIC

SCORE: Final = "score"
"""The scores are profiled like a numeric column under this name."""
NUMBERS: Final = (*NUMERIC, SCORE)
MAX_FUTURE_SKEW_S: Final = 300.0
VIEWS: Final = ("user", "product")


class InvalidRecordError(Exception):
    """A field breaks the record format; carries the rejection."""

    def __init__(self, reason: RejectionReason, detail: str) -> None:
        super().__init__(detail)
        self.rejection = Rejection(reason, detail)


class LoggedRequest(NamedTuple):
    """What the outcome join keeps of a request: its returned items and their scores."""

    request_id: str
    ts: float
    version: int
    items: tuple[str, ...]
    scores: tuple[float, ...]


@dataclass(slots=True)
class ParsedPrediction:
    """A structurally valid record; its column values are checked per group later."""

    request: LoggedRequest
    user_id: str
    rows: int
    columns: dict[str, list[Any]]  # NUMBERS and CATEGORICALS, ``rows`` values each
    ages: tuple[float, float]  # oldest feature per view (NaN when none is known)
    index: int = -1  # position in its Kafka batch, for the DLQ


class OutcomeEvent(NamedTuple):
    """A valid shop event the join uses: an impression with a request id, a click, a purchase."""

    kind: str
    ts: float
    user_id: str
    product_id: str
    request_id: str | None


def outcome_event(event: ShopEvent) -> OutcomeEvent | None:
    """The join's view of a valid event, or None when the join has no use for it."""
    kind = event.event_type
    if kind == "impression" and not event.request_id:
        return None
    if kind not in ("impression", "click", "purchase"):
        return None
    return OutcomeEvent(
        kind, event.event_ts.timestamp(), sys.intern(event.user_id),
        sys.intern(event.product_id), event.request_id,
    )  # fmt: skip


# -- one record ----------------------------------------------------------------


def parse_prediction(raw: bytes, *, model_name: str, now: float) -> ParsedPrediction | Rejection:
    """Parse and check one ``ml.predictions`` message; never raises for bad input."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        return Rejection(RejectionReason.MALFORMED_JSON, f"payload: {error}")
    if not isinstance(body, dict):
        return Rejection(RejectionReason.MALFORMED_JSON, "payload: not a JSON object")
    try:
        return _prediction(body, model_name, now)
    except InvalidRecordError as invalid:
        return invalid.rejection


def _prediction(body: dict[str, Any], model_name: str, now: float) -> ParsedPrediction:
    request_id = _text(body, "request_id")
    user_id = _text(body, "user_id")
    ts = _timestamp(_field(body, "ts", str), now)
    version = _model_version(_field(body, "model", dict), model_name)
    candidates = _field(body, "candidates", list)
    rows = len(candidates)
    scores = _field(body, "scores", list)
    if len(scores) != rows:
        raise InvalidRecordError(
            RejectionReason.INVALID_VALUE, f"scores: {len(scores)} for {rows} candidates"
        )
    if rows and type(scores[0]) is bool:
        raise InvalidRecordError(RejectionReason.WRONG_TYPE, "scores: booleans")
    items, item_scores = _items(_field(body, "items", list))
    columns = _columns(_field(body, "features", dict), rows)
    columns[SCORE] = scores
    ages = _ages(_field(body, "feature_ages", dict))
    request = LoggedRequest(request_id, ts, version, items, item_scores)
    return ParsedPrediction(request, user_id, rows, columns, ages)


_KINDS: Final = {str: "text", int: "an integer", list: "a list", dict: "an object"}


def _field(body: Mapping[str, Any], name: str, kind: type, where: str = "") -> Any:
    value = body.get(name)
    if value is None:
        raise InvalidRecordError(RejectionReason.MISSING_FIELD, f"{where}{name}: missing")
    if not isinstance(value, kind) or isinstance(value, bool):
        detail = f"{where}{name}: not {_KINDS[kind]}"
        raise InvalidRecordError(RejectionReason.WRONG_TYPE, detail)
    return value


def _text(body: Mapping[str, Any], name: str, where: str = "") -> str:
    value: str = _field(body, name, str, where)
    if not value:
        raise InvalidRecordError(RejectionReason.INVALID_VALUE, f"{where}{name}: empty")
    return value


def _number(value: object, name: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRecordError(RejectionReason.WRONG_TYPE, f"{name}: not a number")
    if not math.isfinite(value):
        raise InvalidRecordError(RejectionReason.NON_FINITE, f"{name}: not finite")
    return float(value)


def _timestamp(text: str, now: float) -> float:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidRecordError(RejectionReason.INVALID_VALUE, "ts: not RFC 3339") from None
    if moment.tzinfo is None:
        raise InvalidRecordError(RejectionReason.INVALID_VALUE, "ts: no time zone")
    ts = moment.timestamp()
    if ts > now + MAX_FUTURE_SKEW_S:
        raise InvalidRecordError(RejectionReason.FROM_FUTURE, "ts: over 5 minutes ahead")
    return ts


def _model_version(model: dict[str, Any], model_name: str) -> int:
    name = _text(model, "name", "model.")
    if name != model_name:
        raise InvalidRecordError(RejectionReason.INVALID_VALUE, f"model.name: not {model_name!r}")
    version: int = _field(model, "version", int, "model.")
    if version < 1:
        raise InvalidRecordError(RejectionReason.INVALID_VALUE, "model.version: below 1")
    return version


def _items(items: list[Any]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    ids: list[str] = []
    scores: list[float] = []
    for item in items:
        if not isinstance(item, dict):
            raise InvalidRecordError(RejectionReason.WRONG_TYPE, "items: not objects")
        # interned: the state keeps thousands of copies of a few hundred ids, and a
        # snapshot pickles an interned one once
        ids.append(sys.intern(_text(item, "product_id", "items.")))
        scores.append(_number(item.get("score"), "items.score"))
    return tuple(ids), tuple(scores)


def _columns(features: dict[str, Any], rows: int) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {}
    for name in (*NUMERIC, *CATEGORICALS):
        column = features.get(name)
        if column is None:
            raise InvalidRecordError(RejectionReason.MISSING_FIELD, f"features.{name}: missing")
        if not isinstance(column, list):
            raise InvalidRecordError(RejectionReason.WRONG_TYPE, f"features.{name}: not a list")
        if len(column) != rows:
            raise InvalidRecordError(
                RejectionReason.INVALID_VALUE, f"features.{name}: {len(column)} for {rows} rows"
            )
        if rows and type(column[0]) is bool:
            raise InvalidRecordError(RejectionReason.WRONG_TYPE, f"features.{name}: booleans")
        columns[name] = column
    return columns


def _ages(ages: dict[str, Any]) -> tuple[float, float]:
    oldest = []
    for view in VIEWS:
        known = [
            _number(age, f"feature_ages.{view}")
            for age in _field(ages, view, dict, "feature_ages.").values()
            if age is not None
        ]
        oldest.append(max(known) if known else math.nan)
    return oldest[0], oldest[1]


# -- a group of records ----------------------------------------------------------


@dataclass(slots=True)
class GroupColumns:
    """The checked columns of a group of records, concatenated."""

    records: list[ParsedPrediction]
    numbers: dict[str, np.ndarray]  # NUMBERS, float64, finite
    categories: dict[str, dict[str, int]]  # CATEGORICALS, counts by value

    @property
    def rows(self) -> int:
        return len(self.numbers[SCORE])


def group_columns(
    records: Sequence[ParsedPrediction],
) -> tuple[GroupColumns, list[tuple[ParsedPrediction, Rejection]]]:
    """Concatenate and check the groups' columns; records with bad values come back refused."""
    refused: list[tuple[ParsedPrediction, Rejection]] = []
    good = list(records)
    while True:
        numbers, culprit = _numbers(good)
        categories: dict[str, dict[str, int]] = {}
        if culprit is None:
            categories, culprit = _categories(good)
        if culprit is None:
            return GroupColumns(good, numbers, categories), refused
        rejected = _culprits(good, culprit) or [
            (record, Rejection(RejectionReason.INVALID_VALUE, f"{culprit}: unreadable numbers"))
            for record in good
        ]  # numpy refused the column yet no value alone is bad: refuse the group
        refused.extend(rejected)
        out = {id(record) for record, _ in rejected}
        good = [record for record in good if id(record) not in out]


def _numbers(records: Sequence[ParsedPrediction]) -> tuple[dict[str, np.ndarray], str | None]:
    out: dict[str, np.ndarray] = {}
    for name in NUMBERS:
        try:
            values = np.asarray(list(chain.from_iterable(r.columns[name] for r in records)))
        except (ValueError, TypeError, OverflowError):  # nested lists and the like
            return out, name
        if values.size == 0:
            values = np.empty(0, dtype=np.float64)
        elif values.dtype.kind not in "iuf":
            return out, name
        values = values.astype(np.float64, copy=False)
        if not np.isfinite(values).all():
            return out, name
        out[name] = values
    return out, None


def _categories(
    records: Sequence[ParsedPrediction],
) -> tuple[dict[str, dict[str, int]], str | None]:
    out: dict[str, dict[str, int]] = {}
    for name in CATEGORICALS:
        try:
            counts = Counter(chain.from_iterable(r.columns[name] for r in records))
        except TypeError:  # an unhashable value: a list or an object
            return out, name
        if not all(type(value) is str for value in counts):
            return out, name
        out[name] = dict(counts)
    return out, None


def _culprits(
    records: Sequence[ParsedPrediction], name: str
) -> list[tuple[ParsedPrediction, Rejection]]:
    """The records whose column ``name`` holds a bad value, each with its refusal."""
    label = "scores" if name == SCORE else f"features.{name}"
    found = []
    for record in records:
        for value in record.columns[name]:
            problem = _value_problem(value, categorical=name in CATEGORICALS)
            if problem is not None:
                found.append((record, Rejection(problem, f"{label}: {problem.describe()}")))
                break
    return found


def _value_problem(value: object, *, categorical: bool) -> RejectionReason | None:
    if categorical:
        return None if type(value) is str else RejectionReason.WRONG_TYPE
    if value is None:
        return RejectionReason.NON_FINITE  # the log writes NaN as null
    if not isinstance(value, int | float) or isinstance(value, bool):
        return RejectionReason.WRONG_TYPE
    if not math.isfinite(value) or abs(value) >= 2**63:
        return RejectionReason.NON_FINITE
    return None
