"""The command line: one-line errors and non-zero exits for bad arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.cli.app import main


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["simulate", "--history-days", "45"], "--history-days must be at most 30", 1),
        (["simulate", "--no-kafka"], "--no-kafka needs --jsonl", 1),
        (["simulate", "--events", "many"], "Invalid value for '--events'", 2),
        (["simulate", "--events", "0"], "greater than or equal to 1", 2),
        (["simulate", "--scenario", "meteor"], "'meteor' is not one of", 2),
        (["simulate", "--anchor", "tuesday"], "Invalid value for '--anchor'", 2),
        (["teleport"], "No such command 'teleport'", 2),
        (["status", "--colour"], "No such option", 2),
    ],
)
def test_bad_arguments_give_one_line_and_non_zero_exit(
    args: list[str], message: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1


@pytest.mark.parametrize("args", [["--help"], ["simulate", "--help"], ["up", "--help"]])
def test_help_exits_zero(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(args)
    assert done.value.code == 0
    assert "Usage" in capsys.readouterr().out


def test_simulate_writes_jsonl_without_kafka(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path
    with pytest.raises(SystemExit) as done:
        main(["simulate", "--events", "300", "--seed", "1", "--jsonl", str(folder), "--no-kafka"])
    assert done.value.code == 0
    assert len((folder / "events.jsonl").read_bytes().splitlines()) == 300
    assert "simulated 300 events" in capsys.readouterr().out
