"""The registry webhook: MLflow tells us when a version becomes ``challenger``.

:func:`ensure_webhook` registers (once, by name) an MLflow webhook for
``model_version_alias.created`` pointing at a :class:`WebhookReceiver`, a small
HTTP server on loopback that the retrain worker runs. The receiver checks
MLflow's HMAC signature when a secret is configured (``X-MLflow-Signature`` =
``v1,`` + base64 HMAC-SHA256 of ``{delivery_id}.{timestamp}.{body}``), rejects
deliveries older than five minutes, and hands the version of every new
``challenger`` alias of our registered model to a callback.

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
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

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


class WebhookReceiver:
    """An HTTP server thread that turns challenger deliveries into callbacks."""

    def __init__(
        self,
        settings: Settings,
        on_challenger: Callable[[int], None],
        port: int | None = None,
    ) -> None:
        self.settings = settings
        self.on_challenger = on_challenger
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
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{PATH}"

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

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if self.path != PATH or length > MAX_BODY:
                    self.send_response(HTTPStatus.NOT_FOUND if self.path != PATH
                                       else HTTPStatus.REQUEST_ENTITY_TOO_LARGE)  # fmt: skip
                    self.end_headers()
                    return
                body = self.rfile.read(length).decode("utf-8", errors="replace")
                headers = {k.lower(): v for k, v in self.headers.items()}
                self.send_response(receiver.accept(headers, body))
                self.end_headers()

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
