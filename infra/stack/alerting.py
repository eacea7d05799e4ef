"""Prometheus and Alertmanager as parts of the local stack, and the configs ``up`` writes.

Prometheus scrapes itself, Alertmanager, the prediction API and whatever
flows and workers announce themselves in :func:`scrape_targets_dir`; it loads
the rule files that the packages above infra name in the
``tributary.alert_rules`` entry-point group (infra may not import them) and
sends alerts to Alertmanager. Alertmanager routes alerts labelled
``retrain="true"`` to the retrain worker's webhook receiver and every other
alert to a receiver that drops it.

Intervals are short so a local demo sees an alert seconds after its rule
matches; docs/alerts.md gives production values.

>>> from infra.settings import Settings
>>> config = alertmanager_config(Settings())
>>> "url: \\"http://127.0.0.1:15080/alertmanager\\"" in config
True
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Final

import httpx

from infra.errors import StackError
from infra.settings import HostPort, Settings
from infra.stack.health import CHECK_TIMEOUT_S, http_check, short_reason
from infra.stack.process import Part, bind_host

ALERT_RULES_GROUP: Final = "tributary.alert_rules"
RULE_FILE_GLOB: Final = "*.rules.yml"
# Debian names the binary prometheus-alertmanager; upstream's release calls it alertmanager.
ALERTMANAGER_PROGRAMS: Final = ("prometheus-alertmanager", "alertmanager")
ALERTMANAGER_WEBHOOK_PATH: Final = "/alertmanager"
RETRAIN_RECEIVER: Final = "tributary-retrain"
NULL_RECEIVER: Final = "null"
# Local values; production ones (docs/alerts.md): scrape 15 s, evaluation 30 s,
# group_wait 30 s, group_interval 5 m, repeat_interval 4 h.
SCRAPE_INTERVAL: Final = "5s"
EVALUATION_INTERVAL: Final = "5s"
GROUP_WAIT: Final = "5s"
GROUP_INTERVAL: Final = "10s"
REPEAT_INTERVAL: Final = "1h"
MISSING_HINT: Final = "install it with `make setup`, or run `tributary up --no-monitoring`"


def _q(value: str) -> str:
    # a JSON string is a valid YAML double-quoted scalar, whatever it holds
    return json.dumps(value)


def scrape_targets_dir(settings: Settings) -> Path:
    """Where running flows and workers announce their metrics endpoints.

    Each process writes ``{profile}-{name}-{index}.json`` (Prometheus file service
    discovery) when it starts, so Prometheus finds however many there are.
    """
    return settings.state_dir / "prometheus" / "targets"


def alert_rule_files() -> list[Path]:
    """Every ``*.rules.yml`` in the folders named in the ``tributary.alert_rules`` group."""
    files: list[Path] = []
    for entry in sorted(entry_points(group=ALERT_RULES_GROUP), key=lambda e: e.name):
        try:
            folder = Path(entry.load()())
        except Exception as error:  # a broken plug-in: say which one
            raise StackError(f"alert rules {entry.name!r} ({entry.value}): {error}") from error
        files += sorted(folder.resolve().glob(RULE_FILE_GLOB))
    return files


def _file_sd_job(name: str, targets: str, regex: str, action: str) -> list[str]:
    # Every job reads the same announcements; the `process` label sends the API
    # ("api-0") and the retrain worker ("retrainer-0") to their own jobs and the
    # flows to theirs. A process announces itself while it runs, so nothing is
    # scraped (or alerted as down) for a part nobody started.
    return [
        f"  - job_name: {name}",
        f"    file_sd_configs:\n      - files: [{_q(targets)}]",
        "    relabel_configs:",
        "      - source_labels: [process]",
        f"        regex: {_q(regex)}",
        f"        action: {action}",
    ]


def prometheus_config(settings: Settings, rule_files: Sequence[Path] = ()) -> str:
    """Scrape jobs, rule files and the Alertmanager to notify, as Prometheus YAML."""
    own = str(settings.prometheus_address)
    alertmanager = str(settings.alertmanager_address)
    targets = str(scrape_targets_dir(settings).resolve() / "*.json")
    lines = [
        "# Written by `tributary up` on every start; edits here are overwritten.",
        "# Intervals are the local ones; docs/alerts.md gives production values.",
        "global:",
        f"  scrape_interval: {SCRAPE_INTERVAL}",
        f"  evaluation_interval: {EVALUATION_INTERVAL}",
    ]
    if rule_files:
        lines += ["rule_files:", *(f"  - {_q(str(path))}" for path in rule_files)]
    else:
        lines += ["# no package names alert rules (entry-point group tributary.alert_rules)"]
    lines += [
        "alerting:",
        "  alertmanagers:",
        f"    - static_configs:\n        - targets: [{_q(alertmanager)}]",
        "scrape_configs:",
        f"  - job_name: prometheus\n    static_configs:\n      - targets: [{_q(own)}]",
        f"  - job_name: alertmanager\n    static_configs:\n      - targets: [{_q(alertmanager)}]",
        *_file_sd_job("tributary-api", targets, "api(-[0-9]+)?", "keep"),
        *_file_sd_job("tributary-flows", targets, "(api|retrainer)(-[0-9]+)?", "drop"),
        *_file_sd_job("tributary-retrainer", targets, "retrainer(-[0-9]+)?", "keep"),
    ]
    return "\n".join(lines) + "\n"


def webhook_token_path(settings: Settings) -> Path:
    """The file Alertmanager reads the webhook's bearer token from (owner-only)."""
    return settings.state_dir.resolve() / "alertmanager" / "webhook-token"


def alertmanager_config(settings: Settings) -> str:
    """Retrain alerts to the retrain worker's webhook, everything else nowhere, as YAML.

    When ``training.webhook_secret`` is set the webhook sends it as a bearer
    token, read from :func:`webhook_token_path` so the secret stays out of this file.
    """
    port = settings.training.webhook_port
    lines = [
        "# Written by `tributary up` on every start; edits here are overwritten.",
        "# Intervals are the local ones; docs/alerts.md gives production values.",
        "route:",
        f"  receiver: {_q(NULL_RECEIVER)}",
        "  group_by: [alertname, model_version]",
        f"  group_wait: {GROUP_WAIT}",
        f"  group_interval: {GROUP_INTERVAL}",
        f"  repeat_interval: {REPEAT_INTERVAL}",
        "  routes:",
        f"    - receiver: {_q(RETRAIN_RECEIVER)}",
        f"      matchers: [{_q('retrain=' + _q('true'))}]",
        "receivers:",
        f"  - name: {_q(NULL_RECEIVER)}",
        f"  - name: {_q(RETRAIN_RECEIVER)}",
    ]
    if port == 0:
        # 0 means "any free port": nothing fixed to deliver to, so retrain alerts stop here
        lines.append("    # training.webhook_port is 0: no fixed address to deliver to")
        return "\n".join(lines) + "\n"
    url = f"http://127.0.0.1:{port}{ALERTMANAGER_WEBHOOK_PATH}"
    lines += ["    webhook_configs:", f"      - url: {_q(url)}", "        send_resolved: false"]
    if settings.training.webhook_secret is not None:
        lines += [
            "        http_config:",
            "          authorization:",
            f"            credentials_file: {_q(str(webhook_token_path(settings)))}",
        ]
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def prometheus_part(settings: Settings, state: Path, timeout: float) -> Part:
    address: HostPort = settings.prometheus_address
    home = state / "prometheus"
    config = home / "prometheus.yml"

    def prepare() -> None:
        (home / "data").mkdir(parents=True, exist_ok=True)
        scrape_targets_dir(settings).mkdir(parents=True, exist_ok=True)
        config.write_text(prometheus_config(settings, alert_rule_files()))

    host = bind_host(address)
    return Part(
        name="prometheus",
        address=address,
        argv=(
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={home / 'data'}",
            f"--web.listen-address={host}:{address.port}",
            # links in alerts (generatorURL) point here, not at the machine's hostname
            f"--web.external-url=http://{host}:{address.port}",
        ),
        health=http_check(f"http://{address}/-/ready", loopback=True),
        start_timeout=timeout,
        port_setting="TRIBUTARY_PROMETHEUS_PORT",
        prepare=prepare,
        missing_hint=MISSING_HINT,
    )


def alertmanager_program() -> str:
    """The Alertmanager binary on PATH (Debian's name first), else Debian's name."""
    found = (name for name in ALERTMANAGER_PROGRAMS if shutil.which(name))
    return next(found, ALERTMANAGER_PROGRAMS[0])


def alertmanager_part(settings: Settings, state: Path, timeout: float) -> Part:
    address = settings.alertmanager_address
    home = state / "alertmanager"
    config = home / "alertmanager.yml"

    def prepare() -> None:
        (home / "data").mkdir(parents=True, exist_ok=True)
        secret = settings.training.webhook_secret
        if secret is not None:
            _write_private(webhook_token_path(settings), secret.get_secret_value())
        config.write_text(alertmanager_config(settings))

    host = bind_host(address)
    return Part(
        name="alertmanager",
        address=address,
        argv=(
            alertmanager_program(),
            f"--config.file={config}",
            f"--storage.path={home / 'data'}",
            f"--web.listen-address={host}:{address.port}",
            f"--web.external-url=http://{host}:{address.port}",
            # empty: no gossip port, a single Alertmanager needs no cluster
            "--cluster.listen-address=",
        ),
        health=http_check(f"http://{address}/-/ready", loopback=True),
        start_timeout=timeout,
        port_setting="TRIBUTARY_ALERTMANAGER_PORT",
        prepare=prepare,
        missing_hint=MISSING_HINT,
    )


@dataclass(frozen=True)
class ActiveAlert:
    """An alert Prometheus holds: ``state`` is ``firing``, or ``pending`` while ``for`` runs."""

    name: str
    state: str
    severity: str
    labels: dict[str, str]
    active_at: str
    value: str


def active_alerts(address: HostPort, timeout: float = CHECK_TIMEOUT_S) -> list[ActiveAlert]:
    """Prometheus's pending and firing alerts, firing first; raises :class:`StackError`."""
    url = f"http://{address}/api/v1/alerts"
    try:
        response = httpx.get(url, timeout=timeout, trust_env=False)
        response.raise_for_status()
        items = response.json()["data"]["alerts"]
        alerts = [
            ActiveAlert(
                name=item["labels"].get("alertname", ""),
                state=item["state"],
                severity=item["labels"].get("severity", ""),
                labels=dict(item["labels"]),
                active_at=item.get("activeAt", ""),
                value=str(item.get("value", "")),
            )
            for item in items
        ]
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise StackError(f"prometheus: no alerts from {url}: {short_reason(error)}") from error
    return sorted(alerts, key=lambda a: (a.state != "firing", a.name, sorted(a.labels.items())))
