"""What the monitor asks the registry: does a version exist, what is its reference profile.

Drift of a logged prediction is measured against the reference profile of the
model version that made it (the version in the record), which is the serving
champion's for the traffic it serves (a canary's or pinned version's traffic
against its own). Profiles are loaded from MLflow once per version and cached:
a version's training run never changes. A version without a profile (trained
before profiles existed, or a learner checkpoint) is cached as ``None`` and
gets no drift numbers; :func:`training.profiles.load_profile` says so in one
log line.

The champion alias is polled every ``reference_poll_s`` by a background thread,
never on the dataflow's path: when it moves, the new champion's profile is
(re)loaded before its first predictions arrive, and the switch is logged.

A registry that does not answer never stops the flow: a version it cannot
confirm is taken as known (its records are kept), a profile it cannot deliver
is retried after ``reference_poll_s``, and neither is cached.

>>> book = ReferenceBook(StaticRegistry({3: None}), poll_s=30.0)
>>> book.known(3), book.known(4), book.profile(3) is None
(True, False, True)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from infra.errors import NotFoundError
from infra.settings import Settings
from training.profiles import ReferenceProfile, load_profile
from training.registry import CHAMPION, Registry

log = logging.getLogger(__name__)
Clock = Callable[[], float]


class VersionRegistry(Protocol):
    """The registry calls the book makes; :class:`NotFoundError` means "no such version"."""

    def exists(self, version: int) -> None: ...

    def champion(self) -> int | None: ...

    def profile(self, version: int) -> ReferenceProfile | None: ...


class MlflowVersions:
    """The profile's MLflow registry, connected on first use (not at import or build)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._registry: Registry | None = None

    def _client(self) -> Registry:
        if self._registry is None:
            self._registry = Registry(self.settings)
        return self._registry

    def exists(self, version: int) -> None:
        self._client().version(version)

    def champion(self) -> int | None:
        found = self._client().alias(CHAMPION)
        return None if found is None else found.version

    def profile(self, version: int) -> ReferenceProfile | None:
        return load_profile(self.settings, version)


class StaticRegistry:
    """A fixed registry for tests and benchmarks: versions and their profiles."""

    def __init__(
        self, profiles: Mapping[int, ReferenceProfile | None], champion: int | None = None
    ) -> None:
        self.profiles = dict(profiles)
        self.champion_version = champion
        self.calls = 0

    def exists(self, version: int) -> None:
        self.calls += 1
        if version not in self.profiles:
            raise NotFoundError(f"no version {version}")

    def champion(self) -> int | None:
        return self.champion_version

    def profile(self, version: int) -> ReferenceProfile | None:
        self.exists(version)
        return self.profiles[version]


class ReferenceBook:
    """Known versions and reference profiles, cached; the champion, polled in the background.

    Thread-safe: the workers of one process share it.
    """

    def __init__(
        self, registry: VersionRegistry, poll_s: float, clock: Clock = time.monotonic
    ) -> None:
        self.registry = registry
        self.poll_s = poll_s
        self.clock = clock
        self.champion: int | None = None
        self._known: dict[int, bool] = {}
        self._profiles: dict[int, ReferenceProfile | None] = {}
        self._retry_at: dict[tuple[str, int], float] = {}  # after a registry failure
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def known(self, version: int) -> bool:
        """False only when the registry says the version does not exist."""
        with self._lock:
            if version in self._known:
                return self._known[version]
            if self.clock() < self._retry_at.get(("known", version), float("-inf")):
                return True
            try:
                self.registry.exists(version)
            except NotFoundError:
                self._known[version] = False
                return False
            except Exception as error:  # the registry is down: keep the records
                self._failed("known", version, error)
                return True
            self._known[version] = True
            return True

    def profile(self, version: int) -> ReferenceProfile | None:
        """The version's reference profile, or None without one (or while unreachable)."""
        with self._lock:
            if version in self._profiles:
                return self._profiles[version]
            if self.clock() < self._retry_at.get(("profile", version), float("-inf")):
                return None
            return self._load(version)

    def _load(self, version: int) -> ReferenceProfile | None:
        try:
            profile = self.registry.profile(version)
        except NotFoundError:
            profile = None
        except Exception as error:
            self._failed("profile", version, error)
            return None
        self._profiles[version] = profile
        return profile

    def _failed(self, what: str, version: int, error: Exception) -> None:
        self._retry_at[(what, version)] = self.clock() + self.poll_s
        log.warning("registry unavailable for model version %d (%s): %s", version, what, error)

    # -- the champion ------------------------------------------------------------

    def poll(self) -> None:
        """Look up the champion; on a change, load its profile anew."""
        try:
            champion = self.registry.champion()
        except Exception as error:
            log.warning("cannot read the champion alias: %s", error)
            return
        if champion is None or champion == self.champion:
            return
        with self._lock:
            self._profiles.pop(champion, None)
            self._retry_at.pop(("profile", champion), None)
            profile = self._load(champion)
            self._known[champion] = True
        log.info(
            "champion is version %d (was %s): drift of its traffic against %s", champion,
            self.champion, "its reference profile" if profile else "nothing (no profile)",
        )  # fmt: skip
        self.champion = champion

    def start(self) -> None:
        """Poll the champion every ``poll_s`` in a daemon thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="monitor-reference", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.poll_s)
