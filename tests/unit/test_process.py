"""Process supervision with throwaway real processes: no broker, no Redis, a few seconds."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from infra.errors import StackError
from infra.settings import HostPort
from infra.stack.process import (
    Health,
    Layout,
    Part,
    launch,
    live_pid,
    port_problem,
    preflight,
    read_pid,
    start_parts,
    stop_launched,
)
from tests.local_stack import free_port


def _part(name: str, argv: tuple[str, ...], *, healthy: bool = True, timeout: float = 3.0) -> Part:
    return Part(
        name=name,
        address=HostPort(host="127.0.0.1", port=free_port()),
        argv=argv,
        health=lambda: Health(healthy, "ok" if healthy else "never answers"),
        start_timeout=timeout,
        port_setting=f"TRIBUTARY_{name.upper()}_PORT",
    )


def _pids_running(argv: tuple[str, ...]) -> list[int]:
    wanted = "\0".join(argv).encode() + b"\0"
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes() == wanted:
                pids.append(int(entry.name))
        except OSError:
            continue  # gone while we looked
    return pids


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "state")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def test_early_exit_gives_one_line_reason_with_log_path(layout: Layout) -> None:
    boom = _part("boom", ("sh", "-c", "echo starting; echo boom >&2; exit 3"), healthy=False)

    with pytest.raises(StackError) as caught:
        start_parts([boom], layout)

    message = caught.value.message
    log = layout.log_path("boom")
    assert message == (
        f"boom: exited with code 3 before it was healthy (last output: boom); see {log}"
    )
    assert "\n" not in message
    assert "starting" in log.read_text()
    assert not layout.pid_path("boom").exists()


def test_failure_stops_the_parts_this_call_started(layout: Layout) -> None:
    sleeper_argv = ("sleep", "41.5")
    sleeper = _part("sleeper", sleeper_argv)
    boom = _part("boom", ("sh", "-c", "exit 1"), healthy=False)

    with pytest.raises(StackError, match=r"^boom: exited with code 1 before it was healthy; see "):
        start_parts([sleeper, boom], layout)

    assert _pids_running(sleeper_argv) == []
    assert list((layout.state_dir / "run").iterdir()) == []


def test_not_healthy_in_time_names_the_last_check(layout: Layout) -> None:
    mute = _part("mute", ("sleep", "42.5"), healthy=False, timeout=0.3)

    with pytest.raises(StackError) as caught:
        start_parts([mute], layout)

    log = layout.log_path("mute")
    assert caught.value.message == f"mute: not healthy after 0.3 s (never answers); see {log}"
    assert _pids_running(("sleep", "42.5")) == []


def test_pid_file_guard_against_reuse(layout: Layout) -> None:
    sleeper = _part("sleeper", ("sleep", "43.5"))
    started = launch(sleeper, layout)
    try:
        assert read_pid(layout.pid_path("sleeper")) == started.pid
        assert live_pid(sleeper, layout) == started.pid

        # The pid now names a live process that is not a `sleep`: the pytest process.
        layout.pid_path("sleeper").write_text(f"{os.getpid()}\n")
        assert live_pid(sleeper, layout) is None

        layout.pid_path("sleeper").write_text("not a pid\n")
        assert live_pid(sleeper, layout) is None
    finally:
        stop_launched([started], layout)
    assert started.process.poll() is not None
    assert live_pid(sleeper, layout) is None


def test_preflight_detects_a_bound_port(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    taken = HostPort(host="127.0.0.1", port=port)
    assert port_problem(taken) == "is already in use by another process"

    blocked = replace(_part("kafka", ("sleep", "1")), address=taken)
    with pytest.raises(StackError) as caught:
        preflight([_part("redis", ("sleep", "1")), blocked])
    assert caught.value.message == (
        f"kafka: 127.0.0.1:{port} is already in use by another process "
        "(set TRIBUTARY_KAFKA_PORT to another port)"
    )


def test_preflight_passes_free_ports_and_reports_missing_programs() -> None:
    preflight([_part("fine", ("sleep", "1"))])
    with pytest.raises(StackError, match=r"^ghost: program 'no-such-program-x' not found$"):
        preflight([_part("ghost", ("no-such-program-x",))])
