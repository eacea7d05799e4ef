"""One ``ml.retrain`` request per incident, even across repeats, restarts and races.

:class:`IncidentLedger` keeps one Redis key per incident,
``{profile}:retrain:incident:<fingerprint>@<startsAt>``, whose value is the
incident's state:

- ``pending:<ms>:<token>`` — a delivery claimed it at ``<ms>`` (Redis time) and
  is producing the request now;
- ``sent:<ms>`` — the request is in Kafka; later deliveries are duplicates.

A claim is one Lua script, so two concurrent deliveries cannot both win. A
``pending`` claim older than the lease is taken over: its owner crashed between
claiming and producing, and the request must not be lost. A claim whose
produce failed is released at once, so Alertmanager's retry sends it. The keys
expire after :data:`INCIDENT_TTL_S`; by then the worker's cooldown and its own
incident check (a version already tagged with the incident) hold.

:class:`RetrainPublisher` produces one request and waits for the broker's
acknowledgement; the message times out inside librdkafka before the wait ends,
so a failed publish leaves nothing queued to appear later as a duplicate.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import Final, Literal, cast

from confluent_kafka import KafkaError, Message
from confluent_kafka import Producer as KafkaProducer
from redis import Redis

from infra.errors import TributaryError
from infra.settings import Settings

_LOG = logging.getLogger("training.incidents")
INCIDENT_TTL_S: Final = 7 * 24 * 3600
# longer than a publish can take, so a live claim is never taken over
LEASE_S: Final = 30.0
PUBLISH_TIMEOUT_S: Final = 5.0
Claim = Literal["claimed", "retaken", "sent", "busy"]

_CLAIM: Final = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local held = redis.call('GET', KEYS[1])
if held then
  local state, at = string.match(held, '^(%a+):(%d+)')
  if state == 'sent' then return 'sent' end
  if state == 'pending' and now_ms - tonumber(at) < tonumber(ARGV[3]) then return 'busy' end
end
redis.call('SET', KEYS[1], 'pending:' .. now_ms .. ':' .. ARGV[1], 'EX', ARGV[2])
if held then return 'retaken' end
return 'claimed'
"""
_SENT: Final = """
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('SET', KEYS[1], 'sent:' .. now_ms, 'EX', ARGV[1])
return 1
"""
_RELEASE: Final = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, -string.len(ARGV[1])) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class PublishError(TributaryError):
    """The broker did not acknowledge a retrain request in time; nothing was left queued."""

    code = "publish_failed"
    http_status = 503


class IncidentLedger:
    """Claims on incidents in Redis; see the module docstring."""

    def __init__(
        self, settings: Settings, *, ttl_s: int = INCIDENT_TTL_S, lease_s: float = LEASE_S
    ) -> None:
        self.prefix = f"{settings.redis_key_prefix}retrain:incident:"
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self.client = Redis.from_url(
            settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        self._claim = self.client.register_script(_CLAIM)
        self._sent = self.client.register_script(_SENT)
        self._release = self.client.register_script(_RELEASE)

    def key(self, incident: str) -> str:
        return self.prefix + incident

    def claim(self, incident: str) -> tuple[Claim, str]:
        """Try to become the one delivery that sends ``incident``; (outcome, token)."""
        token = uuid.uuid4().hex
        lease_ms = int(self.lease_s * 1000)
        raw = self._claim(keys=[self.key(incident)], args=[token, self.ttl_s, lease_ms])
        outcome = raw.decode() if isinstance(raw, bytes) else str(raw)
        return cast(Claim, outcome), token

    def mark_sent(self, incident: str) -> None:
        self._sent(keys=[self.key(incident)], args=[self.ttl_s])

    def release(self, incident: str, token: str) -> None:
        """Give a claim back (its publish failed) unless someone else holds it now."""
        self._release(keys=[self.key(incident)], args=[token])

    def state(self, incident: str) -> str | None:
        """``pending``, ``sent`` or None (unknown incident)."""
        raw = self.client.get(self.key(incident))
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        return text.split(":", 1)[0]

    def close(self) -> None:
        self.client.close()


class RetrainPublisher:
    """Produce one ``ml.retrain`` message and wait until the broker has it."""

    def __init__(self, settings: Settings, *, timeout_s: float = PUBLISH_TIMEOUT_S) -> None:
        self.topic = settings.topic(settings.topics.retrain)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._producer = KafkaProducer({
            "bootstrap.servers": settings.kafka_bootstrap,
            "enable.idempotence": True,
            "linger.ms": 0,
            # librdkafka gives up on the message before publish() stops waiting
            "message.timeout.ms": int(timeout_s * 1000),
            "logger": _LOG,
        })  # fmt: skip

    def publish(self, key: bytes, value: bytes) -> None:
        """Raise :class:`PublishError` unless the message is acknowledged."""
        outcome: list[KafkaError | None] = []

        def delivered(error: KafkaError | None, _message: Message) -> None:
            outcome.append(error)

        with self._lock:
            self._producer.produce(self.topic, value, key, on_delivery=delivered)
            self._producer.flush(self.timeout_s + 5.0)
        if not outcome:
            raise PublishError(f"{self.topic}: no acknowledgement within {self.timeout_s:.0f} s")
        if outcome[0] is not None:
            raise PublishError(f"{self.topic}: {outcome[0].str()}")

    def close(self) -> None:
        self._producer.flush(self.timeout_s)
