"""Alertmanager's webhook body → retrain requests with evidence, one per incident.

The bodies under tests/fixtures/alertmanager/ were captured from the real
Alertmanager 0.25 (Debian's ``prometheus-alertmanager``); the integration test
captures a fresh one each run. Redis and Kafka are replaced by in-memory
stand-ins here: these tests are about the receiver's decisions.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, ValidationError
from redis import ConnectionError as RedisConnectionError

from infra.settings import Settings
from training.alert_receiver import (
    ALERT_PATH,
    AlertmanagerNotification,
    AlertReceiver,
    evidence_of,
    reason_of,
    request_for,
)
from training.incidents import Claim, PublishError
from training.retrain_request import RetrainRequest, incident_id, retrain_tags
from training.webhook import Reply, WebhookReceiver

FIXTURES = Path(__file__).parent.parent / "fixtures" / "alertmanager"
FIRING = (FIXTURES / "firing-two-alerts-0.25.json").read_bytes()
MIXED = (FIXTURES / "one-resolved-one-firing-0.25.json").read_bytes()
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class MemoryLedger:
    """The claim states of training.incidents.IncidentLedger, without Redis."""

    def __init__(self) -> None:
        self.states: dict[str, tuple[str, str]] = {}  # incident -> (state, token)
        self.fail: Exception | None = None

    def claim(self, incident: str) -> tuple[Claim, str]:
        if self.fail is not None:
            raise self.fail
        token = uuid.uuid4().hex
        state = self.states.get(incident)
        if state is not None and state[0] in ("sent", "busy"):
            return ("sent" if state[0] == "sent" else "busy"), token
        self.states[incident] = ("pending", token)
        return ("retaken" if state is not None else "claimed"), token

    def mark_sent(self, incident: str) -> None:
        self.states[incident] = ("sent", "")

    def release(self, incident: str, token: str) -> None:
        if self.states.get(incident, ("", ""))[1] == token:
            del self.states[incident]


class MemoryPublisher:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.down = False

    def publish(self, key: bytes, value: bytes) -> None:
        if self.down:
            raise PublishError("ml.retrain: Local: Message timed out")
        self.sent.append((key, value))

    def requests(self) -> list[RetrainRequest]:
        return [RetrainRequest.model_validate_json(value) for _, value in self.sent]


def receiver(secret: str | None = None) -> tuple[AlertReceiver, MemoryLedger, MemoryPublisher]:
    training = Settings().training.model_copy(
        update={"webhook_secret": None if secret is None else SecretStr(secret)}
    )
    settings = Settings(profile="unit", training=training)
    ledger, publisher = MemoryLedger(), MemoryPublisher()
    return AlertReceiver(settings, ledger, publisher, clock=lambda: NOW), ledger, publisher


def body_of(reply: Reply) -> dict[str, Any]:
    assert reply.body is not None
    return reply.body


# -- parsing and evidence ------------------------------------------------------


def test_the_captured_body_parses_and_each_alert_gives_its_evidence() -> None:
    note = AlertmanagerNotification.model_validate_json(FIRING, strict=True)
    assert note.version == "4" and note.receiver == "tributary-retrain"
    assert [a.labels["feature"] for a in note.alerts] == ["product_price", "user_clicks_1h"]
    alert = note.alerts[1]
    evidence = evidence_of(alert)
    assert evidence.alert == "TributaryFeatureDrift" and evidence.severity == "warning"
    assert evidence.metric == "tributary_monitor_feature_psi"
    assert evidence.expression == (
        "max by (model_version, feature) (tributary_monitor_feature_psi) >= 0.2"
    )
    assert (evidence.value, evidence.threshold, evidence.window) == (0.31, 0.2, "5m")
    assert evidence.model_version == 3 and evidence.feature == "user_clicks_1h"
    assert evidence.fingerprint == alert.fingerprint == "e63a8a0bf76675b5"
    assert evidence.starts_at == datetime(2026, 12, 2, 11, 49, 50, 891427, tzinfo=UTC)
    assert evidence.generator_url is not None and "g0.expr=" in evidence.generator_url
    assert evidence.labels == {}  # alertname, severity, retrain, ... have fields
    assert alert.incident == "e63a8a0bf76675b5@2026-12-02T11:49:50.891427Z"


def test_a_request_names_the_alert_the_numbers_and_the_incident() -> None:
    alert = AlertmanagerNotification.model_validate_json(FIRING, strict=True).alerts[1]
    request = request_for(alert, NOW)
    assert request.reason == (
        "TributaryFeatureDrift on model v3, feature user_clicks_1h: "
        "tributary_monitor_feature_psi = 0.31 (threshold 0.2, window 5m)"
    )
    assert request.kind == "torch" and request.requested_at == NOW
    assert request.incident == alert.incident and request.evidence == evidence_of(alert)
    # the message survives the topic: what the worker reads equals what was sent
    assert RetrainRequest.model_validate_json(request.model_dump_json()) == request


def test_odd_annotations_are_kept_out_or_clipped_never_refused() -> None:
    raw = json.loads(FIRING)
    alert = raw["alerts"][0]
    alert["annotations"] = {
        "value": "+Inf",
        "threshold": "twenty",
        "summary": "x" * 2_000,
        "window_end": "-5",
    }
    alert["labels"].update({"retrain_kind": "river", "team": "ml", "model_version": "v3"})
    alert["generatorURL"] = ""
    parsed = AlertmanagerNotification.model_validate(raw, strict=False).alerts[0]
    evidence = evidence_of(parsed)
    assert evidence.value is None and evidence.threshold is None and evidence.window_end is None
    assert evidence.summary == "x" * 500 and evidence.model_version is None
    assert evidence.metric is None and evidence.generator_url is None
    assert evidence.labels == {"retrain_kind": "river", "team": "ml"}
    request = request_for(parsed, NOW)
    assert request.kind == "river"
    assert request.reason == ("TributaryFeatureDrift, feature product_price: " + "x" * 500)[:500]


def test_the_rules_window_end_annotation_becomes_a_time() -> None:
    raw = json.loads(FIRING)
    raw["alerts"][0]["annotations"]["window_end"] = "1796212800"
    alert = AlertmanagerNotification.model_validate(raw, strict=False).alerts[0]
    assert evidence_of(alert).window_end == datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_reason_without_numbers_falls_back_to_the_summary() -> None:
    alert = AlertmanagerNotification.model_validate_json(FIRING, strict=True).alerts[0]
    evidence = evidence_of(alert).model_copy(
        update={"value": None, "threshold": None, "window": None}
    )
    assert reason_of(evidence) == (
        "TributaryFeatureDrift on model v3, feature product_price: "
        "PSI of product_price is 0.27 on model v3"
    )


def test_old_retrain_messages_still_parse_and_new_fields_are_checked() -> None:
    old = RetrainRequest.model_validate_json(b'{"reason": "drift", "kind": "river"}')
    assert old.evidence is None and old.incident is None
    with pytest.raises(ValidationError):
        RetrainRequest.model_validate_json(b'{"reason": "x", "incident": "not an id"}')
    with pytest.raises(ValidationError):
        RetrainRequest.model_validate_json(b'{"reason": "x", "evidence": {"alert": "A"}}')
    starts = datetime(2026, 12, 2, 11, 45, 53, tzinfo=UTC)
    assert incident_id("e63a8a0bf76675b5", starts) == "e63a8a0bf76675b5@2026-12-02T11:45:53.000000Z"


def test_retrain_tags_carry_reason_incident_and_evidence_json() -> None:
    alert = AlertmanagerNotification.model_validate_json(FIRING, strict=True).alerts[1]
    tags = retrain_tags(request_for(alert, NOW))
    assert set(tags) == {
        "retrain_reason", "retrain_incident", "retrain_evidence", "retrain_requested_at",
    }  # fmt: skip
    evidence = json.loads(tags["retrain_evidence"])
    assert evidence["fingerprint"] == alert.fingerprint and evidence["value"] == 0.31
    assert evidence["starts_at"] == "2026-12-02T11:49:50.891427Z"
    assert len(tags["retrain_evidence"]) < 5_000
    assert tags["retrain_incident"] == alert.incident


# -- one request per incident ----------------------------------------------------


def test_each_firing_alert_becomes_one_request_and_repeats_become_none() -> None:
    hook, _, publisher = receiver()
    reply = hook.accept({}, FIRING, "127.0.0.1")
    assert reply.status == HTTPStatus.OK and body_of(reply) == {
        "sent": 2, "duplicates": 0, "ignored": 0,
    }  # fmt: skip
    requests = publisher.requests()
    assert [r.evidence.feature for r in requests if r.evidence] == [
        "product_price", "user_clicks_1h",
    ]  # fmt: skip
    assert [key for key, _ in publisher.sent] == [b"8c06bfcdb06c438b", b"e63a8a0bf76675b5"]
    # the repeat_interval repeat, then a notification where one alert resolved
    assert body_of(hook.accept({}, FIRING, "127.0.0.1"))["duplicates"] == 2
    assert body_of(hook.accept({}, MIXED, "127.0.0.1")) == {
        "sent": 0, "duplicates": 1, "ignored": 1,
    }  # fmt: skip
    assert len(publisher.sent) == 2


def test_alerts_without_the_retrain_label_are_ignored() -> None:
    raw = json.loads(FIRING)
    for alert in raw["alerts"]:
        alert["labels"]["retrain"] = "false"
    hook, _, publisher = receiver()
    reply = hook.accept({}, json.dumps(raw).encode(), "127.0.0.1")
    assert body_of(reply)["ignored"] == 2 and publisher.sent == []


def test_kafka_down_answers_503_and_the_retry_sends_exactly_once() -> None:
    hook, ledger, publisher = receiver()
    publisher.down = True
    reply = hook.accept({}, FIRING, "127.0.0.1")
    assert reply.status == HTTPStatus.SERVICE_UNAVAILABLE
    assert body_of(reply)["error"]["code"] == "unavailable"
    assert "Message timed out" in body_of(reply)["error"]["message"]
    assert publisher.sent == [] and ledger.states == {}  # the claim was given back
    publisher.down = False
    assert body_of(hook.accept({}, FIRING, "127.0.0.1"))["sent"] == 2
    assert body_of(hook.accept({}, FIRING, "127.0.0.1"))["sent"] == 0
    assert len(publisher.sent) == 2


def test_a_claim_left_pending_by_a_crash_is_sent_again() -> None:
    hook, ledger, publisher = receiver()
    note = AlertmanagerNotification.model_validate_json(FIRING, strict=True)
    ledger.states[note.alerts[0].incident] = ("pending", "a-dead-delivery")
    assert body_of(hook.accept({}, FIRING, "127.0.0.1"))["sent"] == 2
    assert len(publisher.sent) == 2
    assert ledger.states[note.alerts[0].incident][0] == "sent"


def test_a_claim_held_by_a_live_delivery_or_redis_down_answers_503() -> None:
    hook, ledger, publisher = receiver()
    note = AlertmanagerNotification.model_validate_json(FIRING, strict=True)
    ledger.states[note.alerts[0].incident] = ("busy", "another-delivery")
    assert hook.accept({}, FIRING, "127.0.0.1").status == HTTPStatus.SERVICE_UNAVAILABLE
    assert publisher.sent == []
    ledger.fail = RedisConnectionError("Connection refused")
    reply = hook.accept({}, FIRING, "127.0.0.1")
    assert reply.status == HTTPStatus.SERVICE_UNAVAILABLE and publisher.sent == []


# -- bad bodies and senders --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"not json", ""),
        (b"[]", ""),
        (FIRING.replace(b'"version":"4"', b'"version":"3"'), "version"),
        (FIRING.replace(b'"fingerprint":"8c06bfcdb06c438b"', b'"fingerprint":"XYZ"'),
         "alerts.0.fingerprint"),
        (FIRING.replace(b'"status":"firing"', b'"status":"pending"', 1), "status"),
        (FIRING.replace(b'"startsAt":"2026', b'"startsAt":"yesterday', 1), "alerts.0.startsAt"),
        (FIRING.replace(b'"alertname":"TributaryFeatureDrift"', b'"alertname":7', 1),
         "alerts.0.labels.alertname"),
    ],
)  # fmt: skip
def test_bad_bodies_get_400_with_where_the_problem_is(body: bytes, where: str) -> None:
    hook, _, publisher = receiver()
    reply = hook.accept({}, body, "127.0.0.1")
    assert reply.status == HTTPStatus.BAD_REQUEST, reply
    error = body_of(reply)["error"]
    assert error["code"] == "invalid_payload" and error["message"].startswith(where)
    assert publisher.sent == []


def test_a_shared_secret_is_required_as_a_bearer_token() -> None:
    hook, _, publisher = receiver(secret="s3cret")
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
        reply = hook.accept(headers, FIRING, "127.0.0.1")
        assert reply.status == HTTPStatus.UNAUTHORIZED
        assert body_of(reply)["error"]["code"] == "unauthorized"
    assert publisher.sent == []
    reply = hook.accept({"authorization": "Bearer s3cret"}, FIRING, "10.0.0.8")
    assert reply.status == HTTPStatus.OK and len(publisher.sent) == 2


def test_without_a_secret_only_loopback_is_trusted() -> None:
    hook, _, publisher = receiver()
    assert hook.accept({}, FIRING, "10.0.0.8").status == HTTPStatus.UNAUTHORIZED
    assert publisher.sent == []
    assert hook.accept({}, FIRING, "::1").status == HTTPStatus.OK and len(publisher.sent) == 2


def test_the_http_route_answers_json_and_refuses_oversized_bodies() -> None:
    hook, _, publisher = receiver()
    server = WebhookReceiver(hook.settings, print, port=0, routes={ALERT_PATH: hook}).start()
    try:
        url = server.base_url + ALERT_PATH
        answer = httpx.post(url, content=FIRING, headers={"Content-Type": "application/json"})
        assert answer.status_code == 200 and answer.json()["sent"] == 2
        big = httpx.post(url, content=b" " * (hook.max_body + 1))
        assert big.status_code == 413 and big.json()["error"]["code"] == "payload_too_large"
        bad = httpx.post(url, content=b"{}")
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_payload"
        missing = httpx.post(server.base_url + "/elsewhere", content=b"{}")
        assert missing.status_code == 404
        # the MLflow route still answers as before
        assert httpx.post(server.url, content=b"{}").status_code == 204
    finally:
        server.stop()
    assert len(publisher.sent) == 2
