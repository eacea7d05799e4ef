"""The monitoring parts of the stack and the configs ``up`` writes for them, without starting them.

The configs are checked by the programs that will read them: ``promtool check
config`` and Alertmanager's ``amtool check-config``; ``amtool config routes
test`` says which receiver an alert with given labels reaches.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from infra.cli.app import main
from infra.errors import ConfigError, StackError
from infra.settings import Settings, TrainingSettings
from infra.stack.alerting import (
    RETRAIN_RECEIVER,
    alert_rule_files,
    alertmanager_config,
    prometheus_config,
    scrape_targets_dir,
    webhook_token_path,
)
from infra.stack.parts import CORE_PARTS, PART_NAMES, stack_parts
from infra.stack.process import preflight
from infra.stack.stack import PartStatus, StackStatus
from monitoring.alerts import rules_dir


def _settings(tmp_path: Path, **training: Any) -> Settings:
    return Settings(
        state_dir=tmp_path,
        prometheus_port=29090,
        alertmanager_port=29093,
        api_port=28000,
        training=TrainingSettings(**{"webhook_port": 25080, **training}),
    )


def _run(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, timeout=60, check=False)


def test_monitoring_parts_are_in_by_default_and_out_on_request(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert [part.name for part in stack_parts(settings)] == list(PART_NAMES)
    assert [p.name for p in stack_parts(settings, monitoring=False)] == list(CORE_PARTS)
    assert PART_NAMES[-2:] == ("prometheus", "alertmanager")
    limits = {p.name: p.start_timeout for p in stack_parts(settings, timeouts={"alertmanager": 7})}
    assert limits["alertmanager"] == 7
    with pytest.raises(ConfigError, match="unknown part 'grafana'"):
        stack_parts(settings, timeouts={"grafana": 5})


def test_alertmanager_listens_on_loopback_without_a_gossip_port(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    part = next(p for p in stack_parts(settings) if p.name == "alertmanager")
    assert Path(part.argv[0]).name in ("prometheus-alertmanager", "alertmanager")
    assert "--cluster.listen-address=" in part.argv
    assert "--web.listen-address=127.0.0.1:29093" in part.argv
    state = tmp_path.resolve() / "alertmanager"
    assert f"--storage.path={state / 'data'}" in part.argv
    assert f"--config.file={state / 'alertmanager.yml'}" in part.argv
    assert part.port_setting == "TRIBUTARY_ALERTMANAGER_PORT"
    assert not part.external


def test_prepare_writes_both_configs_and_the_rules_are_the_entry_points(tmp_path: Path) -> None:
    parts = {p.name: p for p in stack_parts(_settings(tmp_path))}
    for name in ("prometheus", "alertmanager"):
        prepare = parts[name].prepare
        assert prepare is not None
        prepare()
    config = yaml.safe_load((tmp_path / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == [str(path) for path in alert_rule_files()]
    assert [Path(p).name for p in config["rule_files"]] == sorted(
        p.name for p in rules_dir().glob("*.rules.yml")
    )
    assert (tmp_path / "alertmanager" / "alertmanager.yml").is_file()
    assert (tmp_path / "alertmanager" / "data").is_dir()
    assert scrape_targets_dir(_settings(tmp_path)).is_dir()


def _prometheus(tmp_path: Path) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(
        prometheus_config(_settings(tmp_path), alert_rule_files())
    )
    return config


def test_prometheus_config_wires_rules_alertmanager_and_jobs(tmp_path: Path) -> None:
    config = _prometheus(tmp_path)
    assert config["global"] == {"scrape_interval": "5s", "evaluation_interval": "5s"}
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "127.0.0.1:29093"
    ]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert list(jobs) == [
        "prometheus", "alertmanager", "tributary-api", "tributary-flows", "tributary-retrainer",
    ]  # fmt: skip
    announced = str(scrape_targets_dir(_settings(tmp_path)).resolve() / "*.json")
    for name, regex, action in (
        ("tributary-api", "api(-[0-9]+)?", "keep"),
        ("tributary-flows", "(api|retrainer)(-[0-9]+)?", "drop"),
        ("tributary-retrainer", "retrainer(-[0-9]+)?", "keep"),
    ):
        assert jobs[name]["file_sd_configs"] == [{"files": [announced]}]
        [relabel] = jobs[name]["relabel_configs"]
        assert relabel == {"source_labels": ["process"], "regex": regex, "action": action}


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    scrape_targets_dir(settings).mkdir(parents=True)
    # promtool warns about a discovery pattern that matches no file yet
    (scrape_targets_dir(settings) / "dev-ingest-0.json").write_text("[]")
    path = tmp_path / "prometheus.yml"
    path.write_text(prometheus_config(settings, alert_rule_files()))
    result = _run("promtool", "check", "config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid prometheus config file syntax" in result.stdout
    assert f"SUCCESS: {len(alert_rule_files())} rule files found" in result.stdout
    assert "WARNING" not in result.stdout


def test_a_prometheus_config_without_rule_packages_has_no_rule_files(tmp_path: Path) -> None:
    assert "rule_files" not in yaml.safe_load(prometheus_config(_settings(tmp_path)))


def _alertmanager(tmp_path: Path, **training: Any) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(alertmanager_config(_settings(tmp_path, **training)))
    return config


def test_alertmanager_config_routes_retrain_alerts_to_the_worker(tmp_path: Path) -> None:
    config = _alertmanager(tmp_path)
    route = config["route"]
    assert route["receiver"] == "null"
    assert route["group_by"] == ["alertname", "model_version"]
    assert (route["group_wait"], route["group_interval"], route["repeat_interval"]) == (
        "5s", "10s", "1h",
    )  # fmt: skip
    assert route["routes"] == [{"receiver": RETRAIN_RECEIVER, "matchers": ['retrain="true"']}]
    receivers = {receiver["name"]: receiver for receiver in config["receivers"]}
    assert receivers["null"] == {"name": "null"}
    assert receivers[RETRAIN_RECEIVER]["webhook_configs"] == [
        {"url": "http://127.0.0.1:25080/alertmanager", "send_resolved": False}
    ]


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=TributaryFeatureDrift", "retrain=true", "model_version=3"], RETRAIN_RECEIVER),
        (["alertname=TributaryAucDrop", "retrain=true"], RETRAIN_RECEIVER),
        (["alertname=TributaryApiDown", "severity=critical"], "null"),
        (["alertname=TributaryFeatureDrift", "retrain=false"], "null"),
    ],
)
def test_amtool_routes_by_the_retrain_label(
    tmp_path: Path, labels: list[str], receiver: str
) -> None:
    path = tmp_path / "alertmanager.yml"
    path.write_text(alertmanager_config(_settings(tmp_path)))
    checked = _run("amtool", "check-config", str(path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    routed = _run("amtool", "config", "routes", "test", f"--config.file={path}", *labels,
                  cwd=tmp_path)  # fmt: skip
    assert routed.returncode == 0, routed.stdout + routed.stderr
    assert routed.stdout.strip() == receiver


def test_the_webhook_secret_travels_as_a_bearer_token_file(tmp_path: Path) -> None:
    settings = _settings(tmp_path, webhook_secret=SecretStr("s3cret-token"))
    text = alertmanager_config(settings)
    assert "s3cret-token" not in text
    [hook] = next(r for r in yaml.safe_load(text)["receivers"] if r["name"] == RETRAIN_RECEIVER)[
        "webhook_configs"
    ]
    token = webhook_token_path(settings)
    assert hook["http_config"] == {"authorization": {"credentials_file": str(token)}}
    part = next(p for p in stack_parts(settings) if p.name == "alertmanager")
    assert part.prepare is not None
    part.prepare()
    assert token.read_text() == "s3cret-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    path = tmp_path / "alertmanager" / "alertmanager.yml"
    checked = _run("amtool", "check-config", str(path), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_webhook_port_zero_leaves_the_retrain_receiver_without_a_webhook(tmp_path: Path) -> None:
    receivers = _alertmanager(tmp_path, webhook_port=0)["receivers"]
    assert next(r for r in receivers if r["name"] == RETRAIN_RECEIVER) == {"name": RETRAIN_RECEIVER}


def test_a_missing_program_names_the_way_out(tmp_path: Path) -> None:
    part = next(p for p in stack_parts(_settings(tmp_path)) if p.name == "prometheus")
    missing = type(part)(**{**part.__dict__, "argv": ("no-such-prometheus-here",)})
    with pytest.raises(StackError) as caught:
        preflight([missing])
    assert caught.value.message == (
        "prometheus: program 'no-such-prometheus-here' not found (install it with "
        "`make setup`, or run `tributary up --no-monitoring`)"
    )


def test_up_refuses_contradicting_monitoring_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["up", "--with-prometheus", "--no-monitoring"])
    assert done.value.code == 1
    err = capsys.readouterr().err
    assert err == "error: --with-prometheus and --no-monitoring contradict each other\n"


def test_status_prints_the_alerts_firing_first(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.cli.stack import print_status
    from infra.stack.alerting import ActiveAlert

    monkeypatch.setenv("COLUMNS", "200")
    prometheus = PartStatus("prometheus", "127.0.0.1:19090", 42, "running", True, "HTTP 200")
    drift = ActiveAlert(
        "TributaryFeatureDrift", "firing", "warning",
        {"alertname": "TributaryFeatureDrift", "feature": "price", "model_version": "3",
         "retrain": "true", "severity": "warning", "instance": "127.0.0.1:19140"},
        "2026-12-02T11:45:53.19Z", "0.31",
    )  # fmt: skip
    print_status(StackStatus([prometheus], [], None, [drift]))
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "TributaryFeatureDrift" in line)
    assert "firing" in row and "feature=price, model_version=3" in row
    assert "2026-12-02T11:45:53" in row and "instance" not in row

    print_status(StackStatus([prometheus], [], None, []))
    assert "alerts: none firing or pending" in capsys.readouterr().out
    print_status(StackStatus([prometheus], [], None, [], "prometheus: no alerts from x"))
    assert "alerts: prometheus: no alerts from x" in capsys.readouterr().out
