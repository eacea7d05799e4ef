"""One JSON error shape for every failure: ``{"error": {"code", "message"}}``.

:class:`infra.errors.TributaryError` carries its own ``code`` and HTTP status,
so one handler serves them all; FastAPI's validation errors become 422
``invalid_request`` (400 ``invalid_json`` when the body is not JSON), and
Starlette's HTTP errors (unknown route, wrong method, too large) keep their
status with a stable code. Anything else is a 500 ``internal_error`` whose
message names no internals.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from infra.errors import TributaryError
from serving.schemas import ErrorDetail, ErrorResponse, PydanticJSON

_LOG = logging.getLogger("serving.errors")

HTTP_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "unavailable",
}


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> PydanticJSON:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, details=details))
    return PydanticJSON(body, status_code=status, exclude_none=True)


async def tributary_error(request: Request, error: Exception) -> PydanticJSON:
    assert isinstance(error, TributaryError)
    if error.http_status >= 500:
        _LOG.error("%s %s: %s", request.method, request.url.path, error)
    return error_response(error.http_status, error.code, error.message)


async def validation_error(request: Request, error: Exception) -> PydanticJSON:
    assert isinstance(error, RequestValidationError)
    problems = list(error.errors())
    if any(problem.get("type") == "json_invalid" for problem in problems):
        return error_response(400, "invalid_json", "the body is not valid JSON")
    # loc, msg and type only: ``input`` and ``ctx`` may hold what the client sent
    details = [
        {
            "loc": [str(part) for part in p.get("loc", ())],
            "msg": p.get("msg"),
            "type": p.get("type"),
        }
        for p in problems
    ]
    first = details[0] if details else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"])
    return error_response(422, "invalid_request", f"{where}: {first['msg']}", details)


async def http_error(request: Request, error: Exception) -> PydanticJSON:
    assert isinstance(error, HTTPException)
    code = HTTP_CODES.get(error.status_code, "http_error")
    return error_response(error.status_code, code, str(error.detail))


async def unexpected_error(request: Request, error: Exception) -> PydanticJSON:
    _LOG.exception("%s %s failed", request.method, request.url.path)
    return error_response(500, "internal_error", "the server failed to answer; see its log")


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(TributaryError, tributary_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
