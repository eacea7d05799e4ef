"""Real health checks: each asks the service a question only a working one can answer."""

from __future__ import annotations

import logging
import socket
from typing import Any

import httpx
import redis
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from infra.settings import HostPort
from infra.stack.process import Health, HealthCheck, bind_host

CHECK_TIMEOUT_S = 2.0
DETAIL_CHARS = 100
_KAFKA_LOG = logging.getLogger("infra.stack.kafka")


def short_reason(error: BaseException) -> str:
    """One short line out of an exception, for a status column."""
    text = str(error)
    if isinstance(error, KafkaException) and error.args and hasattr(error.args[0], "str"):
        # str(KafkaException) is a repr-like dump; the KafkaError's own text reads better.
        text = str(error.args[0].str())
    lines = text.strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:DETAIL_CHARS]


def kafka_config(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """Client settings that log through Python logging instead of raw stderr."""
    return {"bootstrap.servers": bootstrap, "logger": _KAFKA_LOG, **extra}


def _tcp_refusal(address: HostPort, timeout: float) -> str | None:
    # A closed port fails in microseconds here, where a Kafka client would
    # retry until its timeout; check it first so status stays quick.
    try:
        with socket.create_connection((bind_host(address), address.port), timeout=timeout):
            return None
    except OSError as error:
        return short_reason(error)


def kafka_check(bootstrap: str, address: HostPort, timeout: float = CHECK_TIMEOUT_S) -> HealthCheck:
    """Healthy when the broker answers a metadata request."""

    def check() -> Health:
        refusal = _tcp_refusal(address, timeout)
        if refusal is not None:
            return Health(False, refusal)
        try:
            metadata = AdminClient(kafka_config(bootstrap)).list_topics(timeout=timeout)
        except KafkaException as error:
            return Health(False, short_reason(error))
        return Health(True, f"{len(metadata.brokers)} broker(s)")

    return check


def redis_check(url: str, timeout: float = CHECK_TIMEOUT_S) -> HealthCheck:
    """Healthy when the server answers PING."""

    def check() -> Health:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            client.ping()
        except redis.RedisError as error:
            return Health(False, short_reason(error))
        finally:
            client.close()
        return Health(True, "PING answered")

    return check


def http_check(url: str, *, loopback: bool, timeout: float = CHECK_TIMEOUT_S) -> HealthCheck:
    """Healthy when ``url`` answers HTTP 200."""

    def check() -> Health:
        try:
            # A proxy from the environment must not sit between us and loopback.
            response = httpx.get(url, timeout=timeout, trust_env=not loopback)
        except httpx.HTTPError as error:
            return Health(False, short_reason(error))
        if response.status_code != httpx.codes.OK:
            return Health(False, f"HTTP {response.status_code} from {url}")
        return Health(True, "HTTP 200")

    return check
