"""Commands of the training package (filled in below)."""

from __future__ import annotations

from infra.cli.app import CommandGroups


def register(groups: CommandGroups) -> None:
    """Add the training commands to the CLI."""
