"""The flow runner: run plans, and clearing snapshots a killed execution left behind."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.runner import RunPlan, discard_uncommitted_snapshots
from infra.errors import ConfigError


def snaps(folder: Path) -> list[tuple[str, str, int]]:
    with closing(sqlite3.connect(folder / "part-0.sqlite3")) as db:
        return sorted(db.execute("SELECT step_id, state_key, snap_epoch FROM snaps"))


def recovered_run(folder: Path) -> None:
    flow = Dataflow("counting")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(["a", "b", "a"])), str)
    counts = op.stateful_map("count", keyed, lambda n, _: ((n or 0) + 1, (n or 0) + 1))
    op.output("out", counts, TestingSink([]))
    run_main(flow, epoch_interval=timedelta(seconds=1), recovery_config=RecoveryConfig(str(folder)))


def test_snapshots_of_uncommitted_epochs_are_discarded(tmp_path: Path) -> None:
    init_db_dir(tmp_path, 1)
    recovered_run(tmp_path)
    committed = snaps(tmp_path)
    assert committed and discard_uncommitted_snapshots(tmp_path) == 0
    with closing(sqlite3.connect(tmp_path / "part-0.sqlite3")) as db, db:
        ex, resume = db.execute("SELECT MAX(ex_num), MAX(resume_epoch) FROM exs").fetchone()
        frontier = db.execute("SELECT MAX(worker_frontier) FROM fronts").fetchone()[0]
        # a later execution that was killed before it committed any frontier,
        # leaving a shard snapshot for an epoch the next execution will number again
        db.execute("INSERT INTO exs (ex_num, worker_count, resume_epoch) VALUES (?, 1, ?)",
                   (ex + 1, frontier))  # fmt: skip
        db.execute("INSERT INTO snaps (step_id, state_key, snap_epoch, ser_change) "
                   "VALUES ('counting.count', 'a', ?, NULL)", (frontier + 2,))  # fmt: skip
    assert discard_uncommitted_snapshots(tmp_path) == 1
    assert snaps(tmp_path) == committed
    assert resume <= frontier


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"flow": "nope"}, "unknown flow 'nope'"),
        ({"workers": 0}, "at least 1"),
        ({"processes": 2, "process_id": 0}, "--addresses"),
    ],
)
def test_bad_plans_are_refused(changes: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"flow": "ingest", **changes}
    with pytest.raises(ConfigError, match=message):
        RunPlan(**arguments)  # type: ignore[arg-type]
