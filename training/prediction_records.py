"""Logged predictions read strictly: the ``ml.predictions`` record as the contract rows it holds.

Serving (:mod:`serving.prediction_log`) logs, per answered request, the
contract rows the model scored. Two readers need those rows exactly as served:
the parity check (:mod:`monitoring.prediction_sample`) and the logged
reference of a training run (:mod:`training.logged_reference`). The parser
lives here, below both, because imports go one way: training may not import
monitoring.

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
training.prediction_records.RecordError: invalid_record: ts: Input should have timezone info
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictStr
from pydantic import ValidationError as PydanticValidationError

from infra.errors import TributaryError
from training.contract import COLUMNS, SPEC

_KINDS: Final = dict(SPEC)
_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "long": (int,),
    "double": (float, int),  # a double written without a fraction is still one
}


class RecordError(TributaryError):
    """A logged prediction that cannot be read; ``reason`` is for counting."""

    code = "invalid_prediction_record"

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class _Payload(BaseModel):
    """The fields of a prediction-log message read here; the others are ignored."""

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
