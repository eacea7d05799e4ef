"""The training chapter of ``tributary demo``: train, gate and promote a model."""

from __future__ import annotations

from rich.console import Console

from infra.settings import Settings
from training.cli import print_gates
from training.promotion import GateFailedError, promote
from training.train import TrainRequest, train


def models(settings: Settings, console: Console) -> None:
    """A PyTorch model through the gates to champion, and a River model beside it."""
    console.print("tributary train --kind torch --challenger")
    report = train(settings, TrainRequest(kind="torch", max_epochs=8, challenger=True))
    console.print(
        f"  version {report.version} on {report.device}: validation AUC {report.valid_auc:.4f} "
        f"({report.train_rows} training rows, Delta {report.delta_versions})"
    )
    console.print(f"tributary promote --version {report.version}")
    try:
        promoted = promote(settings, report.version)
        print_gates(promoted.to_dict(), as_json=False)
    except GateFailedError as failure:
        print_gates(failure.report.to_dict(), as_json=False)
        console.print(f"[red]{failure}[/]")
    console.print("tributary train --kind river")
    river = train(settings, TrainRequest(kind="river", progress=False))
    console.print(
        f"  version {river.version}: validation AUC {river.valid_auc:.4f}, "
        f"{river.extra.get('examples_per_s', 0):,} examples/s"
    )
