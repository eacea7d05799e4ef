"""The long-running processes of the closed loop, started together and stopped together.

``tributary up`` runs the stack's servers (broker, Redis, MLflow, Prometheus,
Alertmanager); the loop also needs our own processes: the prediction API, the
ingest, feature and monitor flows and the retrain worker. :class:`LoopProcesses`
starts each as ``python -m infra.cli …`` in a process group of its own, with
its output in ``{state_dir}/logs/loop-{name}.log``, and stops them all on exit
(SIGTERM, then SIGKILL after a grace period) — so a demo or a test that fails
half-way leaves nothing running. A process that exits early is reported with
the last line of its log, never waited on silently.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Final

from infra.errors import StackError
from infra.settings import Settings

STOP_GRACE_S: Final = 15.0

LOOP_COMMANDS: Final[Mapping[str, tuple[str, ...]]] = {
    "api": ("serve",),
    "ingest": ("run", "ingest"),
    "features": ("run", "features"),
    "monitor": ("run", "monitor"),
    "retrainer": ("run", "retrainer"),
}


@dataclass
class LoopProcesses:
    """Start ``names`` (keys of :data:`LOOP_COMMANDS`) with ``env``; a context manager."""

    settings: Settings
    names: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _logs: list[IO[bytes]] = field(default_factory=list)

    def log_path(self, name: str) -> Path:
        return self.settings.state_dir / "logs" / f"loop-{name}.log"

    def start(self) -> LoopProcesses:
        environment = {**os.environ, **self.env}
        for name in self.names:
            path = self.log_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            log = path.open("ab")
            self._logs.append(log)
            argv = [sys.executable, "-m", "infra.cli", *LOOP_COMMANDS[name]]
            self.children[name] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=environment,
                start_new_session=True,
            )  # fmt: skip
        return self

    def check(self) -> None:
        """Raise :class:`StackError` naming the first process that exited."""
        for name, child in self.children.items():
            code = child.poll()
            if code is not None:
                raise StackError(
                    f"{name} exited with {code}: {last_line(self.log_path(name))} "
                    f"(log: {self.log_path(name)})"
                )

    def stop(self) -> None:
        for child in self.children.values():
            _signal_group(child, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()
        for log in self._logs:
            log.close()

    def __enter__(self) -> LoopProcesses:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(child: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):  # it exited since poll()
            os.killpg(child.pid, sig)


def last_line(path: Path) -> str:
    """The last non-empty line of a log, for an error message."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:200] if lines else "(empty log)"
