"""API keys: ``X-API-Key`` against ``settings.api_keys``, compared in constant time.

Roles are ``predict`` and ``admin``; admin implies predict. In the ``dev``
profile auth is off unless keys are configured; any other profile refuses to
start without keys. Keys are never logged or echoed: errors name only the
header.

>>> keys = ApiKeys({"k-pred": "predict", "k-admin": "admin"})
>>> keys.role_of("k-admin"), keys.role_of("nope"), keys.role_of(None)
('admin', None, None)
>>> keys.authorize("k-admin", "predict")
>>> keys.authorize("k-pred", "admin")
Traceback (most recent call last):
...
serving.security.ForbiddenError: this API key lacks the 'admin' role
>>> ApiKeys({}).authorize(None, "admin")  # no keys configured: auth is off
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Literal

from infra.errors import ConfigError, TributaryError
from infra.settings import Settings

Role = Literal["predict", "admin"]
HEADER = "X-API-Key"
_GRANTS: dict[Role, frozenset[Role]] = {
    "predict": frozenset({"predict"}),
    "admin": frozenset({"predict", "admin"}),
}


class UnauthorizedError(TributaryError):
    """No API key, or one that is not configured."""

    code = "unauthorized"
    http_status = 401


class ForbiddenError(TributaryError):
    """A valid key without the role the route needs."""

    code = "forbidden"
    http_status = 403


class ApiKeys:
    """The configured keys and their roles; empty means auth is off."""

    def __init__(self, roles: Mapping[str, Role]) -> None:
        self._keys = [(key.encode(), role) for key, role in roles.items()]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        """The settings' keys; a ConfigError outside ``dev`` when there are none."""
        try:
            roles = settings.api_key_roles()
        except ValueError as error:
            raise ConfigError(str(error)) from None  # the message never holds a key
        if not roles and not settings.is_dev:
            raise ConfigError(
                f"profile {settings.profile!r} needs API keys: set TRIBUTARY_API_KEYS "
                "to 'key:predict,key:admin' (auth is optional only in the dev profile)"
            )
        return cls(roles)

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def role_of(self, presented: str | None) -> Role | None:
        """The key's role, comparing against every key so timing reveals nothing."""
        if presented is None:
            return None
        candidate = presented.encode()
        found: Role | None = None
        for key, role in self._keys:
            if hmac.compare_digest(candidate, key):
                found = role
        return found

    def authorize(self, presented: str | None, needed: Role) -> None:
        """Return quietly when ``presented`` may call a route needing ``needed``."""
        if not self._keys:
            return
        if presented is None:
            raise UnauthorizedError(f"missing {HEADER} header")
        role = self.role_of(presented)
        if role is None:
            raise UnauthorizedError(f"unknown {HEADER}")
        if needed not in _GRANTS[role]:
            raise ForbiddenError(f"this API key lacks the {needed!r} role")
