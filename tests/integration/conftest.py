"""The real local stack for integration tests: free ports, a temporary state folder.

``stack_settings`` starts one stack per test session and stops it at the end;
``new_stack_settings`` builds settings for a test that needs a stack of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from infra.plantly.catalog import ensure_catalog_table
from infra.settings import Settings
from infra.stack.kafka_admin import ensure_topics
from tests.local_stack import running_stack, settings_env, settings_for

NewStackSettings = Callable[[str], Settings]


@pytest.fixture(scope="session")
def new_stack_settings(tmp_path_factory: pytest.TempPathFactory) -> NewStackSettings:
    """Build settings for a separate stack: ``new_stack_settings("lifecycle")``."""

    def build(name: str) -> Settings:
        return settings_for(tmp_path_factory.mktemp(name))

    return build


@pytest.fixture(scope="session")
def stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Settings of the session's running stack (Tansu, Redis, MLflow, topics, catalog)."""
    with running_stack(tmp_path_factory.mktemp("stack")) as settings:
        yield settings


@pytest.fixture
def profile_settings(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> Settings:
    """The session stack under a profile of this test's own: empty topics and tables."""
    profile = "t" + str(abs(hash(request.node.nodeid)) % 10**8)
    settings = stack_settings.model_copy(update={"profile": profile})
    ensure_topics(settings.kafka_bootstrap, settings.all_topics(), settings.topic_partitions)
    ensure_catalog_table(settings)
    for name, value in settings_env(settings).items():
        monkeypatch.setenv(name, value)
    return settings
