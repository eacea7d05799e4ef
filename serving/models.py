"""The models a serving process holds: champion, challenger and pinned versions.

:meth:`ModelStore.refresh` asks the registry where the ``champion`` and
``challenger`` aliases point, loads any version it does not hold yet *before*
touching what requests read, and then swaps one reference. A request reads
:attr:`ModelStore.routing` once, so it is answered entirely by the models it
saw: a hot swap never fails or mixes a request. Loaded versions stay in a small
LRU cache, so ``?version=N`` and a challenger promoted to champion need no
second load. Refreshes run in a worker thread (MLflow's client is blocking);
a failed one keeps the models already held.

>>> from serving.testing import FakeSource
>>> source = FakeSource({1: 0.1, 2: 0.2}, champion=1)
>>> store = ModelStore(source, "plant-recommender")
>>> store.refresh().changed
True
>>> store.route().answer.version
1
>>> source.aliases["champion"] = 2
>>> store.refresh().changed, store.route().answer.version, source.loads
(True, 2, [1, 2])
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final, Protocol

from infra.errors import TributaryError
from training.pyfunc import RecommenderModel
from training.registry import CHALLENGER, CHAMPION, RegisteredVersion

_LOG = logging.getLogger("serving.models")
CACHE_SIZE: Final = 4


class NoModelError(TributaryError):
    """Nothing to answer with yet: the registry has no champion, or it did not load."""

    code = "no_model"
    http_status = 503


class ModelSource(Protocol):
    """Where models come from: :class:`training.registry.Registry` in production."""

    def alias(self, alias: str) -> RegisteredVersion | None: ...

    def load(self, number: int) -> RecommenderModel: ...


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """A version ready to score, and the alias it answers as (None when pinned)."""

    name: str
    version: int
    alias: str | None
    model: RecommenderModel


@dataclass(frozen=True, slots=True)
class Routing:
    """One consistent view of the aliases, swapped as a whole."""

    champion: LoadedModel | None = None
    challenger: LoadedModel | None = None


@dataclass(frozen=True, slots=True)
class Route:
    """Who answers a request, and who scores it in the shadow (not returned)."""

    answer: LoadedModel
    shadow: LoadedModel | None


@dataclass
class RefreshReport:
    changed: bool = False
    champion: int | None = None
    challenger: int | None = None
    error: str | None = None
    at: float = field(default_factory=time.time)


class ModelStore:
    """Champion and challenger for requests; refreshed from a :class:`ModelSource`."""

    def __init__(
        self,
        source: ModelSource,
        name: str,
        *,
        canary_fraction: float = 0.0,
        shadow: bool = False,
        cache_size: int = CACHE_SIZE,
        rng: random.Random | None = None,
    ) -> None:
        self.source = source
        self.name = name
        self.canary_fraction = canary_fraction
        self.shadow = shadow
        self.cache_size = cache_size
        self.routing = Routing()
        self.last_refresh: RefreshReport | None = None
        self._rng = rng or random.Random()
        self._cache: OrderedDict[int, RecommenderModel] = OrderedDict()
        self._lock = threading.Lock()  # one load at a time; readers never take it

    # -- the request path: no I/O, no lock ------------------------------------

    def route(self) -> Route:
        """The model that answers this request (canary draw) and the shadow, if any."""
        routing = self.routing
        champion, challenger = routing.champion, routing.challenger
        if champion is None:
            raise NoModelError(f"{self.name} has no champion loaded yet")
        answer = champion
        if challenger is not None and self._rng.random() < self.canary_fraction:
            answer = challenger
        shadow = None
        if self.shadow and challenger is not None:
            shadow = champion if answer is challenger else challenger
        return Route(answer, shadow)

    def cached(self, number: int) -> LoadedModel | None:
        model = self._cache.get(number)
        return None if model is None else LoadedModel(self.name, number, None, model)

    def set_routing(self, canary_fraction: float, shadow: bool | None = None) -> None:
        if not 0.0 <= canary_fraction <= 1.0:
            raise ValueError("canary_fraction must be within [0, 1]")
        self.canary_fraction = canary_fraction
        if shadow is not None:
            self.shadow = shadow

    def cached_versions(self) -> list[int]:
        return sorted(self._cache)

    # -- blocking: call from a worker thread ----------------------------------

    def pinned(self, number: int) -> LoadedModel:
        """Version ``number`` (loaded once, then cached); NotFoundError when absent."""
        with self._lock:
            return LoadedModel(self.name, number, None, self._load(number))

    def refresh(self) -> RefreshReport:
        """Follow the aliases; load first, then swap. Never raises."""
        with self._lock:
            report = RefreshReport()
            try:
                self._follow(report)
            except Exception as error:  # a registry outage must not stop serving
                report.error = f"{type(error).__name__}: {error}"
                _LOG.warning("model refresh failed, keeping the models held: %s", report.error)
            held = self.routing
            report.champion = None if held.champion is None else held.champion.version
            report.challenger = None if held.challenger is None else held.challenger.version
            self.last_refresh = report
            return report

    def _follow(self, report: RefreshReport) -> None:
        wanted = {alias: self.source.alias(alias) for alias in (CHAMPION, CHALLENGER)}
        held = self.routing
        loaded: dict[str, LoadedModel | None] = {}
        for alias, current in ((CHAMPION, held.champion), (CHALLENGER, held.challenger)):
            target = wanted[alias]
            if target is None:
                # a champion alias that vanished keeps the last one serving
                loaded[alias] = current if alias == CHAMPION else None
            elif current is not None and current.version == target.version:
                loaded[alias] = current
            else:
                loaded[alias] = LoadedModel(
                    self.name, target.version, alias, self._load(target.version)
                )
        new = Routing(loaded[CHAMPION], loaded[CHALLENGER])
        report.changed = new != held
        if report.changed:
            self.routing = new  # the swap: one reference assignment
            _LOG.info("serving champion %s, challenger %s", _v(new.champion), _v(new.challenger))

    def _load(self, number: int) -> RecommenderModel:
        model = self._cache.get(number)
        if model is None:
            model = self.source.load(number)
            self._cache[number] = model
        self._cache.move_to_end(number)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return model


def _v(model: LoadedModel | None) -> str:
    return "none" if model is None else f"v{model.version}"
