"""Supervised local processes: preflight, start, wait until healthy, pid files, stop.

Generic over :class:`Part`, so a test can supervise a throwaway ``sh -c`` part
exactly the way ``tributary up`` supervises the broker.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infra.errors import StackError
from infra.settings import HostPort
from infra.stack.procfs import adopt, cmdline, stop_groups

POLL_S = 0.2
STOP_GRACE_S = 10.0
LAST_LINE_CHARS = 160


@dataclass(frozen=True)
class Health:
    """The answer of one health check: ``detail`` is a short reason, for people."""

    ok: bool
    detail: str


HealthCheck = Callable[[], Health]


@dataclass(frozen=True)
class Part:
    """A program the stack may run: how to start it, where it listens, how to ask if it is well.

    ``signature`` names command-line tokens that, with the program name, tell
    this part's process apart from any other one reusing its old pid.
    ``port_setting`` is the setting a person changes when the port is taken;
    ``missing_hint`` what to do when the program is not installed.
    """

    name: str
    address: HostPort
    argv: tuple[str, ...]
    health: HealthCheck
    start_timeout: float = 15.0
    env: Mapping[str, str] = field(default_factory=dict)
    signature: tuple[str, ...] = ()
    port_setting: str = ""
    prepare: Callable[[], None] | None = None
    missing_hint: str = ""

    @property
    def external(self) -> bool:
        """Somebody else runs it: the stack only health-checks it."""
        return not self.address.is_loopback

    def matches(self, tokens: Sequence[str]) -> bool:
        """Whether a command line is this part's program, not an unrelated reuse of its pid."""
        if not self.argv or not tokens:
            return False
        names = set(tokens) | {Path(token).name for token in tokens}
        program_ok = Path(tokens[0]).name == Path(self.argv[0]).name
        return program_ok and all(token in names for token in self.signature)


@dataclass(frozen=True)
class Layout:
    """Where a stack keeps its logs and pid files: one state folder."""

    state_dir: Path

    def log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def pid_path(self, name: str) -> Path:
        return self.state_dir / "run" / f"{name}.pid"


@dataclass(frozen=True)
class Launched:
    """A part this process started, still to be proven healthy."""

    part: Part
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def _pid_file_lines(path: Path) -> list[str]:
    try:
        return path.read_text().split()
    except OSError:
        return []


def read_pid(path: Path) -> int | None:
    """The pid a pid file names (its first line), or None."""
    lines = _pid_file_lines(path)
    return int(lines[0]) if lines and lines[0].isdigit() else None


def recorded_address(path: Path) -> str | None:
    """The address the part was started on (a pid file's second line), or None."""
    lines = _pid_file_lines(path)
    return lines[1] if len(lines) > 1 else None


def live_pid(part: Part, layout: Layout) -> int | None:
    """The pid in the part's pid file if that process is alive and still runs this part."""
    pid = read_pid(layout.pid_path(part.name))
    if pid is None:
        return None
    tokens = cmdline(pid)
    return pid if tokens is not None and part.matches(tokens) else None


def bind_host(address: HostPort) -> str:
    """The literal address to listen on: ``localhost`` means IPv4 loopback here."""
    return "127.0.0.1" if address.host == "localhost" else address.host


def port_problem(address: HostPort) -> str | None:
    """Why a server could not listen on ``address`` now, or None when it could."""
    host = bind_host(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # Servers set SO_REUSEADDR, so a port left in TIME_WAIT by a previous
        # run is free for them; only a real listener should count as taken.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, address.port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return "is already in use by another process"
            return f"cannot be listened on ({error.strerror})"
    return None


def preflight(parts: Sequence[Part]) -> None:
    """Fail before anything starts if a program is missing or a port is taken."""
    problems: list[str] = []
    for part in parts:
        if shutil.which(part.argv[0]) is None:
            hint = f" ({part.missing_hint})" if part.missing_hint else ""
            problems.append(f"{part.name}: program {part.argv[0]!r} not found{hint}")
        problem = port_problem(part.address)
        if problem is not None:
            hint = f" (set {part.port_setting} to another port)" if part.port_setting else ""
            problems.append(f"{part.name}: {part.address} {problem}{hint}")
    if problems:
        raise StackError("; ".join(problems))


def launch(part: Part, layout: Layout) -> Launched:
    """Start one part in its own session, output to its log, pid in its pid file."""
    log_path, pid_path = layout.log_path(part.name), layout.pid_path(part.name)
    for folder in (log_path.parent, pid_path.parent):
        folder.mkdir(parents=True, exist_ok=True)
    if part.prepare is not None:
        part.prepare()
    with log_path.open("wb") as log:
        try:
            process = subprocess.Popen(
                part.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **part.env},
                # Stray files a server writes land in the state folder, not the checkout.
                cwd=layout.state_dir,
                start_new_session=True,
            )
        except OSError as error:
            raise StackError(f"{part.name}: cannot start {part.argv[0]}: {error}") from error
    adopt(process)
    tmp = pid_path.with_suffix(".tmp")
    # The address goes along so a later `up` notices that the settings moved.
    tmp.write_text(f"{process.pid}\n{part.address}\n")
    tmp.replace(pid_path)
    return Launched(part, process, log_path)


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
            lines = log.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    line = next((text.strip() for text in reversed(lines) if text.strip()), "")
    return line[:LAST_LINE_CHARS]


def _exit_reason(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _is_healthy(item: Launched, waited: float) -> bool:
    """One look at a starting part; raises when it died or ran out of time."""
    part, log = item.part, item.log_path
    code = item.process.poll()
    if code is not None:
        last = _last_line(log)
        said = f" (last output: {last})" if last else ""
        raise StackError(
            f"{part.name}: {_exit_reason(code)} before it was healthy{said}; see {log}"
        )
    health = part.health()
    if health.ok:
        return True
    if waited >= part.start_timeout:
        raise StackError(
            f"{part.name}: not healthy after {part.start_timeout:g} s ({health.detail}); see {log}"
        )
    return False


def wait_all_healthy(launched: Sequence[Launched]) -> None:
    """Watch all starting parts together, so the wait is the slowest one's, not the sum."""
    started = time.monotonic()
    pending = list(launched)
    while pending:
        pending = [item for item in pending if not _is_healthy(item, time.monotonic() - started)]
        if pending:
            time.sleep(POLL_S)


def stop_launched(launched: Sequence[Launched], layout: Layout) -> None:
    """Stop parts this process started and forget their pid files."""
    stop_groups([item.pid for item in launched], STOP_GRACE_S)
    for item in launched:
        layout.pid_path(item.part.name).unlink(missing_ok=True)


def start_parts(parts: Sequence[Part], layout: Layout) -> list[Launched]:
    """Start ``parts`` and wait until every one answers its health check.

    All or nothing: when one part exits early or is not healthy in time, every
    part this call started is stopped again, so no half-started stack is left,
    and a :class:`StackError` names the failing part and its log in one line.
    """
    launched: list[Launched] = []
    try:
        # The slowest starter goes first, so its start-up overlaps the others'.
        for part in sorted(parts, key=lambda p: -p.start_timeout):
            launched.append(launch(part, layout))
        wait_all_healthy(launched)
    except BaseException:
        stop_launched(launched, layout)
        raise
    return launched
