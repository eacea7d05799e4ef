"""Errors a command reports as one line on stderr."""

from __future__ import annotations


class CliError(Exception):
    """A user-facing failure of a command; the message is the whole story."""

    exit_code = 1
