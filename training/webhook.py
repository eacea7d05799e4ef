"""The registry webhook: MLflow tells us when a version becomes ``challenger``.

:func:`ensure_webhook` registers (once, by name) an MLflow webhook for
``model_version_alias.created`` pointing at a :class:`WebhookReceiver`, a small
HTTP server on loopback that the retrain worker runs. The receiver checks
MLflow's HMAC signature when a secret is configured (``X-MLflow-Signature`` =
``v1,`` + base64 HMAC-SHA256 of ``{delivery_id}.{timestamp}.{body}``), rejects
deliveries older than five minutes, and hands the version of every new
``challenger`` alias of our registered model to a callback. The same server
answers other webhooks through extra :class:`Route` objects (the retrain
worker adds Alertmanager's, :mod:`training.alert_receiver`).

>>> body = '{"entity": "model_version_alias", "action": "created", '\\
...        '"data": {"name": "plant-recommender", "alias": "challenger", "version": "7"}}'
>>> challenger_version(json.loads(body), "plant-recommender")
7
>>> challenger_version(json.loads(body), "prod.plant-recommender") is None
True
>>> sig = sign("s3cret", "d-1", "1700000000", body)
>>> verify("s3cret", "d-1", "1700000000", body, sig)
True
>>> verify("wrong", "d-1", "1700000000", body, sig)
False
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Protocol

from mlflow import MlflowClient
from mlflow.entities.webhook import WebhookEvent

from infra.settings import Settings
from training.registry import CHALLENGER, configure

_LOG = logging.getLogger("training.webhook")
MAX_AGE_S: Final = 300
MAX_BODY: Final = 64 * 1024
PATH: Final = "/mlflow/registry"


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    digest = hmac.new(
        secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256
    ).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, delivery_id: str, timestamp: str, body: str, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, delivery_id, timestamp, body), signature)


def alias_change(payload: dict[str, Any], model_name: str) -> tuple[str, str, int] | None:
    """(action, alias, version) of an alias delivery about ``model_name``, else None.

    >>> alias_change({"entity": "model_version_alias", "action": "deleted",
    ...               "data": {"name": "m", "alias": "champion", "version": "3"}}, "m")
    ('deleted', 'champion', 3)
    """
    if payload.get("entity") != "model_version_alias":
        return None
    data = payload.get("data") or {}
    if data.get("name") != model_name:
        return None
    try:
        return str(payload.get("action")), str(data["alias"]), int(data["version"])
    except (KeyError, TypeError, ValueError):
        return None


def challenger_version(payload: dict[str, Any], model_name: str) -> int | None:
    """The version a delivery made ``challenger`` of ``model_name``, else None."""
    change = alias_change(payload, model_name)
    if change is None or change[:2] != ("created", CHALLENGER):
        return None
    return change[2]


def fresh_and_signed(secret: str, headers: dict[str, str], body: str) -> bool:
    """MLflow's signature matches and the delivery is at most five minutes old."""
    stamp = headers.get("x-mlflow-timestamp", "")
    signature = headers.get("x-mlflow-signature", "")
    if not verify(secret, headers.get("x-mlflow-delivery-id", ""), stamp, body, signature):
        return False
    return stamp.isdigit() and abs(time.time() - int(stamp)) <= MAX_AGE_S


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: a status and, optionally, a JSON body."""

    status: HTTPStatus
    body: dict[str, Any] | None = None

    @classmethod
    def error(cls, status: HTTPStatus, code: str, message: str) -> Reply:
        """The project's error shape, ``{"error": {"code", "message"}}``."""
        return cls(status, {"error": {"code": code, "message": message}})


class Route(Protocol):
    """One more webhook the receiver serves, at its own path."""

    @property
    def max_body(self) -> int: ...

    def accept(self, headers: Mapping[str, str], body: bytes, client: str) -> Reply: ...


class WebhookReceiver:
    """An HTTP server thread that turns challenger deliveries into callbacks."""

    def __init__(
        self,
        settings: Settings,
        on_challenger: Callable[[int], None],
        port: int | None = None,
        routes: Mapping[str, Route] | None = None,
    ) -> None:
        self.settings = settings
        self.on_challenger = on_challenger
        self.routes = dict(routes or {})
        self.secret = (
            settings.training.webhook_secret.get_secret_value()
            if settings.training.webhook_secret
            else None
        )
        self.server = ThreadingHTTPServer(
            ("127.0.0.1", settings.training.webhook_port if port is None else port),
            self._handler(),
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="webhook-receiver")  # fmt: skip

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def url(self) -> str:
        """Where MLflow delivers."""
        return self.base_url + PATH

    def start(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def accept(self, headers: dict[str, str], body: str) -> HTTPStatus:
        """Decide on one delivery; public so it can be tested without sockets."""
        if self.secret is not None and not fresh_and_signed(self.secret, headers, body):
            return HTTPStatus.UNAUTHORIZED
        try:
            payload = json.loads(body)
        except json.JSONDecodeError:
            return HTTPStatus.BAD_REQUEST
        if not isinstance(payload, dict):
            return HTTPStatus.BAD_REQUEST
        version = challenger_version(payload, self.settings.registered_model_name)
        if version is not None:
            self.on_challenger(version)
        return HTTPStatus.NO_CONTENT

    def route(self, path: str, headers: dict[str, str], body: bytes, client: str) -> Reply:
        """Answer one POST whose body fits its route's limit."""
        if path == PATH:
            return Reply(self.accept(headers, body.decode("utf-8", errors="replace")))
        return self.routes[path].accept(headers, body, client)

    def max_body(self, path: str) -> int | None:
        """The body limit of ``path``; None for a path nobody serves."""
        if path == PATH:
            return MAX_BODY
        return self.routes[path].max_body if path in self.routes else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                limit = receiver.max_body(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                if limit is None:
                    self._send(Reply.error(HTTPStatus.NOT_FOUND, "not_found", self.path))
                elif length > limit:
                    self.close_connection = True  # the unread body must not become a request
                    message = f"the body is over {limit} bytes"
                    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
                    self._send(Reply.error(status, "payload_too_large", message))
                else:
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    body = self.rfile.read(length)
                    self._send(receiver.route(self.path, headers, body, self.client_address[0]))

            def _send(self, reply: Reply) -> None:
                payload = b"" if reply.body is None else json.dumps(reply.body).encode()
                self.send_response(reply.status)
                if payload:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                _LOG.debug(format, *args)

        return Handler


def ensure_webhook(
    settings: Settings, url: str, name: str | None = None, *, deletions: bool = False
) -> str:
    """Register a webhook in MLflow by name (or point the existing one at ``url``); its id.

    Alias creations always; alias deletions too with ``deletions``.
    """
    client: MlflowClient = configure(settings)
    name = name or f"tributary-{settings.profile}-challenger"
    secret = (
        settings.training.webhook_secret.get_secret_value()
        if settings.training.webhook_secret
        else None
    )
    events: list[Any] = [WebhookEvent("model_version_alias", "created")]
    if deletions:
        events.append(WebhookEvent("model_version_alias", "deleted"))
    for hook in client.list_webhooks():
        if hook.name == name:
            client.update_webhook(hook.webhook_id, url=url, events=events, secret=secret)
            return str(hook.webhook_id)
    created = client.create_webhook(name, url, events, secret=secret)
    return str(created.webhook_id)
