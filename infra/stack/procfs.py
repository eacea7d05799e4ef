"""What Linux says about a process: its command line, its group, whether it is gone.

Everything here reads ``/proc`` rather than trusting a pid file, because a pid
in a file may have been reused by an unrelated program since it was written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

POLL_S = 0.05
KILL_WAIT_S = 5.0
EXEC_RETRIES = 20
EXEC_RETRY_S = 0.005
PF_KTHREAD = 0x00200000  # kernel threads have no command line, ever

# Popen objects of the children this process started. Holding them lets a stop
# in the same process (tests, a failed `up`) reap its children instead of
# leaving zombies, and keeps Python from warning that they still run.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def adopt(process: subprocess.Popen[bytes]) -> None:
    """Remember a child so that :func:`stop_groups` can reap it later."""
    _CHILDREN[process.pid] = process


def _reap(pid: int) -> None:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]


def _read_cmdline(pid: int) -> bytes | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def cmdline(pid: int) -> list[str] | None:
    """The tokens of a live process's command line; None when it is gone or a zombie."""
    _reap(pid)
    raw = _read_cmdline(pid)
    # Popen returns while the child is still inside execve, whose new command
    # line is briefly empty; only a zombie (or kernel thread) stays empty.
    for _ in range(EXEC_RETRIES):
        if raw != b"" or not _may_be_in_exec(pid):
            break
        time.sleep(EXEC_RETRY_S)
        raw = _read_cmdline(pid)
    if not raw:
        return None
    # Redis rewrites its title into one space-separated string: split on both.
    return raw.replace(b"\0", b" ").decode(errors="replace").split() or None


def _may_be_in_exec(pid: int) -> bool:
    fields = _stat_fields(Path(f"/proc/{pid}/stat"))
    if not fields or fields[0] == "Z":
        return False
    return not int(fields[6]) & PF_KTHREAD


def _stat_fields(stat_path: Path) -> list[str] | None:
    try:
        text = stat_path.read_text()
    except OSError:
        return None
    # The command name in parentheses may hold spaces; fields start after it.
    return text[text.rfind(")") + 2 :].split()


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    _reap(pgid)
    members: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry / "stat")
        if fields and fields[0] != "Z" and fields[2] == str(pgid):
            members.append(int(entry.name))
    return members


def _is_gone(pid: int) -> bool:
    return cmdline(pid) is None and not group_members(pid)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Parts start in their own session, so they lead their group and the group
    # holds their workers too; anything else gets the signal alone.
    try:
        leads_group = os.getpgid(pid) == pid
    except ProcessLookupError:
        # The leader is gone, but workers may still sit in its group; Linux
        # never hands out a pid that is still some group's id, so it is ours.
        leads_group = bool(group_members(pid))
    try:
        if leads_group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pids: Sequence[int], deadline: float) -> list[int]:
    left = list(pids)
    while left:
        left = [pid for pid in left if not _is_gone(pid)]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    return left


def stop_groups(pids: Sequence[int], grace: float = 10.0) -> None:
    """SIGTERM each process group, wait up to ``grace`` seconds, then SIGKILL the rest.

    All groups are signalled before any is waited for, so slow shutdowns overlap.
    """
    for pid in pids:
        _signal_group(pid, signal.SIGTERM)
    left = _wait_gone(pids, time.monotonic() + grace)
    for pid in left:
        _signal_group(pid, signal.SIGKILL)
    _wait_gone(left, time.monotonic() + KILL_WAIT_S)
