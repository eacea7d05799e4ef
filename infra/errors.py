"""The one error base class of Tributary.

Every error a user can cause or see derives from :class:`TributaryError`; it
carries a stable machine-readable ``code`` and the HTTP status the serving layer
answers with, so routers never map exceptions by hand.

>>> raise_it = StackError("redis: port 16379 is taken")
>>> raise_it.code, raise_it.http_status
('stack_error', 503)
"""

from __future__ import annotations


class TributaryError(Exception):
    """Base class: a message for people, a ``code`` for programs, an HTTP status."""

    code = "tributary_error"
    http_status = 500
    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(TributaryError):
    """Settings that cannot work (a bad URL, a missing binary)."""

    code = "config_error"
    http_status = 500
    exit_code = 2


class StackError(TributaryError):
    """A part of the local stack could not start, stop or answer."""

    code = "stack_error"
    http_status = 503


class NotFoundError(TributaryError):
    """An entity, view, model version or table that does not exist."""

    code = "not_found"
    http_status = 404


class InvalidInputError(TributaryError):
    """Input that breaks the contract, caught before any work is done."""

    code = "invalid_input"
    http_status = 422
