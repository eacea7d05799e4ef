"""The alert rules in monitoring/alerts: promtool checks and tests them, and every rule is complete.

``promtool`` (Debian ``prometheus``, installed by ``make setup``) is the real
rule evaluator: ``check rules`` parses and lints, ``test rules`` runs the
``*.test.yml`` unit tests against synthetic series.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.stack.alerting import alert_rule_files
from monitoring.alerts import rules_dir

ALERTS = rules_dir()
RULE_FILES = sorted(ALERTS.glob("*.rules.yml"))
TEST_FILES = sorted(ALERTS.glob("*.test.yml"))
DOCS = Path(__file__).resolve().parents[2] / "docs"
# What the issue asks for, by concern; each must exist under one of these names.
REQUIRED = {
    "TributaryFeatureDrift", "TributaryScoreDrift", "TributaryConceptDrift",
    "TributaryAucDrop", "TributaryConversionDrop", "TributaryEstimatedPerformanceDrop",
    "TributaryServingLatencyHigh", "TributaryFeatureStaleness", "TributaryDlqRateHigh",
    "TributaryPredictionLogDrops", "TributaryFlowDown", "TributaryApiDown",
    "TributaryRetrainFailed", "TributaryParityMismatch", "TributaryNoReferenceProfile",
}  # fmt: skip
# The alerts Alertmanager routes to the retrain worker.
RETRAIN = {
    "TributaryFeatureDrift", "TributaryCategoricalDrift", "TributaryScoreDrift",
    "TributaryConceptDrift", "TributaryAucDrop", "TributaryConversionDrop",
    "TributaryEstimatedPerformanceDrop",
}  # fmt: skip


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules() -> list[dict[str, Any]]:
    return [
        rule for path in RULE_FILES for group in _load(path)["groups"] for rule in group["rules"]
    ]


RULES = {rule["alert"]: rule for rule in _rules()}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", *args], capture_output=True, text=True, cwd=ALERTS, timeout=120, check=False
    )


def test_the_rule_folder_holds_rules_and_tests() -> None:
    assert len(RULE_FILES) >= 3
    assert {path.name.removesuffix(".test.yml") for path in TEST_FILES} == {
        path.name.removesuffix(".rules.yml") for path in RULE_FILES
    }
    assert len(RULES) == sum(len(g["rules"]) for p in RULE_FILES for g in _load(p)["groups"])


def test_up_finds_the_rules_through_the_entry_point() -> None:
    assert alert_rule_files() == RULE_FILES


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_promtool_check_rules(path: Path) -> None:
    result = _promtool("check", "rules", path.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(path: Path) -> None:
    result = _promtool("test", "rules", path.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "FAILED" not in result.stdout


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_each_test_file_loads_its_own_rule_file(path: Path) -> None:
    assert _load(path)["rule_files"] == [path.name.replace(".test.yml", ".rules.yml")]


def test_the_required_alerts_exist() -> None:
    assert set(RULES) >= REQUIRED


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_rule_is_named_labelled_and_annotated(name: str) -> None:
    rule = RULES[name]
    assert re.fullmatch(r"Tributary(?:[A-Z][a-z0-9]+)+", name)
    assert rule["labels"]["severity"] in ("warning", "critical")
    notes = rule["annotations"]
    for key in ("summary", "description", "runbook_url"):
        assert notes.get(key, "").strip(), f"{name} has no {key}"
    assert notes["runbook_url"] == f"docs/runbook.md#{name.lower()}"


@pytest.mark.parametrize("name", sorted(RULES))
def test_only_model_alerts_ask_for_a_retrain(name: str) -> None:
    labels = RULES[name]["labels"]
    if name in RETRAIN:
        assert labels.get("retrain") == "true"
        # the retrain request's evidence reads these
        assert {"metric", "threshold", "value", "window"} <= set(RULES[name]["annotations"])
    else:
        assert "retrain" not in labels


def _rule_tests() -> dict[str, dict[str, list[Any]]]:
    """For each alert name, the expected alert lists its promtool tests check."""
    seen: dict[str, dict[str, list[Any]]] = {}
    for path in TEST_FILES:
        for test in _load(path)["tests"]:
            for check in test.get("alert_rule_test", []):
                expected = check.get("exp_alerts") or []
                kind = "firing" if expected else "quiet"
                seen.setdefault(check["alertname"], {"firing": [], "quiet": []})[kind].append(
                    expected
                )
    return seen


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_rule_is_tested_firing_and_not_firing(name: str) -> None:
    checks = _rule_tests().get(name, {"firing": [], "quiet": []})
    assert checks["firing"], f"no promtool test expects {name} to fire"
    assert checks["quiet"], f"no promtool test expects {name} to stay quiet"
    if name in RETRAIN:
        # the evidence names the model version: the rule must keep that label
        for expected in checks["firing"]:
            assert all(alert["exp_labels"].get("model_version") for alert in expected)


def test_the_runbook_has_one_section_per_alert() -> None:
    text = (DOCS / "runbook.md").read_text()
    sections = re.findall(r"^## (Tributary\w+)\s*$", text, flags=re.MULTILINE)
    assert sorted(sections) == sorted(RULES)
    for name in RULES:
        body = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Means**", "**Check**", "**Do**"):
            assert part in body, f"runbook section {name} lacks {part}"


def test_the_alerts_doc_lists_every_alert() -> None:
    text = (DOCS / "alerts.md").read_text()
    listed = set(re.findall(r"^\| `(Tributary\w+)` \|", text, flags=re.MULTILINE))
    assert listed == set(RULES)
