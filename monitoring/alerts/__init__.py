"""Prometheus alert rules: ``*.rules.yml``, each with its promtool tests in ``*.test.yml``.

``infra`` may not import this package, so ``tributary up`` finds the folder
through the ``tributary.alert_rules`` entry point and points Prometheus's
``rule_files`` at the rule files in it. Thresholds and the measurements behind
them are in the comments of each rule; ``docs/alerts.md`` lists them all and
``docs/runbook.md`` says what to do when one fires.

>>> sorted(path.name for path in rules_dir().glob("*.rules.yml"))
['drift.rules.yml', 'operations.rules.yml', 'performance.rules.yml']
"""

from __future__ import annotations

from pathlib import Path


def rules_dir() -> Path:
    """The folder of the rule files, wherever the package is installed."""
    return Path(__file__).resolve().parent
