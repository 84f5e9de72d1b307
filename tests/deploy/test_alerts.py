"""deploy/prometheus: ``promtool check rules`` / ``test rules`` / ``check config`` pass, and every
alert carries a severity and a runbook that exists. promtool comes from Debian's ``prometheus``
package, which .ci/run installs; without it these tests are skipped, saying so.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package `prometheus`; .ci/run installs it)"
)


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:  # type: ignore[type-arg]
    return [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]


@needs_promtool
def test_promtool_check_rules() -> None:
    r = promtool("check", "rules", "alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules())} rules found" in r.stdout


@needs_promtool
def test_promtool_check_rules_refuses_a_broken_expression(tmp_path: Path) -> None:
    broken = (PROM / "alerts.yml").read_text().replace("engramdb_ready{job=", "engramdb_ready{{job=", 1)
    (tmp_path / "alerts.yml").write_text(broken)
    assert promtool("check", "rules", "alerts.yml", cwd=tmp_path).returncode != 0


@needs_promtool
def test_promtool_test_rules() -> None:
    r = promtool("test", "rules", "alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_every_alert_is_unit_tested() -> None:
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    firing = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case.get("exp_alerts")}
    assert {r["alert"] for r in rules()} == firing


@needs_promtool
def test_promtool_check_config(tmp_path: Path) -> None:
    # The example names the secrets' paths on a Prometheus server; promtool checks that they exist.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "engramdb-metrics-key").write_text("edb_" + "x" * 40)
    text = (PROM / "prometheus.yml").read_text()
    assert "/etc/prometheus/secrets/" in text
    (tmp_path / "prometheus.yml").write_text(text.replace("/etc/prometheus/secrets/", f"{secrets}/"))
    shutil.copy(PROM / "alerts.yml", tmp_path / "alerts.yml")
    ca = secrets / "engramdb-ca.crt"
    from tls_certs import self_signed

    cert, _ = self_signed(tmp_path)
    shutil.copy(cert, ca)
    r = promtool("check", "config", "prometheus.yml", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout + r.stderr


def test_every_alert_has_a_severity_and_an_existing_runbook() -> None:
    for rule in rules():
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        runbook = rule["annotations"]["runbook"]
        assert runbook.startswith("docs/runbooks/") and (ROOT / runbook).is_file(), (rule["alert"], runbook)
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
