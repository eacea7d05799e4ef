"""Pure ASGI middleware: the request body limit and per-route request metrics.

Both wrap the app without Starlette's ``BaseHTTPMiddleware``, which costs a task
and a stream per request.

:class:`BodySizeLimit` answers 413 from ``Content-Length`` before the app runs,
and counts the bytes of a streamed (chunked) body as the app reads them,
raising an ``HTTPException(413)`` that the JSON error handler renders.
"""

from __future__ import annotations

import time
from typing import Final

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import error_response
from serving.metrics import ServingMetrics

MAX_BODY_BYTES: Final = 64 * 1024
_UNMATCHED: Final = "unmatched"


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with a JSON 413."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            response = error_response(413, "payload_too_large", self._message())
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request bodies are limited to {self.max_bytes} bytes"


class RequestMetrics:
    """Count and time every HTTP request by its route template and status."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            # the template, never the raw path: entity ids would explode the label set
            name = getattr(route, "path", _UNMATCHED)
            self.metrics.request_seconds.labels(name).observe(time.perf_counter() - started)
            self.metrics.requests.labels(name, str(status)).inc()


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
