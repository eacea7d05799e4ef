"""Headers of a ``shop.dlq`` message; its value is the original bytes, untouched.

>>> h = DlqHeaders(reason=RejectionReason.WRONG_TYPE, detail="price: Input should be a number",
...                source_topic="shop.events", source_partition=3, source_offset=1041)
>>> [name for name, _ in h.to_kafka()]
['reason', 'detail', 'source_topic', 'source_partition', 'source_offset']
>>> h.to_kafka()[0]
('reason', b'wrong_type')
>>> DlqHeaders.from_kafka(h.to_kafka()) == h
True
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from infra.contracts.rejections import RejectionReason

KafkaHeaders = list[tuple[str, bytes]]


class DlqHeaders(BaseModel):
    """Where a rejected message came from and why it was rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reason: RejectionReason
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int

    def to_kafka(self) -> KafkaHeaders:
        return [(name, str(value).encode()) for name, value in self.model_dump().items()]

    @classmethod
    def from_kafka(cls, headers: KafkaHeaders | None) -> DlqHeaders:
        fields = {name: value.decode() for name, value in headers or []}
        return cls.model_validate(fields)
