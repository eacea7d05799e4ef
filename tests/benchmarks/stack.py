"""A stack for benchmarks: the configured one when it answers, else a temporary one."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.settings import Settings
from infra.stack import status
from tests.local_stack import running_stack


@contextmanager
def benchmark_stack() -> Iterator[Settings]:
    """Use the running local stack if Kafka is healthy; otherwise start one in a temp folder."""
    settings = Settings()
    if status(settings).part("kafka").healthy:
        yield settings
        return
    with (
        tempfile.TemporaryDirectory(prefix="tributary-bench-") as folder,
        running_stack(Path(folder)) as temporary,
    ):
        yield temporary
