"""What an operator loads into their monitoring: deploy/prometheus/alerts.yaml passes `promtool check rules` and its
unit tests (`promtool test rules`), and every metric the rules and the Grafana dashboard name is one a worker's
/metrics serves — a renamed metric would leave an alert that never fires and a panel that stays empty."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.kafka_support import Worker, new_topic, worker_env
from tests.services import ROOT

pytestmark = pytest.mark.integration

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "chatbridge.json"
METRIC = re.compile(r"\b((?:chatbridge|process)_[a-z0-9_]+)\b")
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created")}  # fmt: skip


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("promtool") is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have promtool (.ci/run installs Debian's prometheus)", pytrace=False)
        pytest.skip("promtool is missing on this developer machine (apt-get install prometheus); CI runs this test")
    return subprocess.run(["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)


def test_the_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", "alerts.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_on_its_story_and_stays_quiet_otherwise() -> None:
    result = promtool("test", "rules", "alerts.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    # every alert has a test that expects it to fire
    rules = yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((PROMETHEUS / "alerts.test.yaml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert alerts == fired, f"alerts without a test that fires them: {sorted(alerts - fired)}"


def _expressions() -> dict[str, list[str]]:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yaml").read_text())
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels and all(p.get("targets") for p in panels)
    variables = [v["definition"] for v in dashboard["templating"]["list"] if v.get("definition")]
    return {
        "alerts.yaml": [rule["expr"] for group in rules["groups"] for rule in group["rules"]],
        "chatbridge.json": [t["expr"] for p in panels for t in p["targets"]] + variables,
    }


def served_names(port: int) -> set[str]:
    """The names a scrape of /metrics yields: each family's samples, also those a labelled family has no child of
    yet (a counter's `_total`, a histogram's `_bucket`, …)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text):
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
        names.update(sample.name for sample in family.samples)
    return names


def test_the_rules_and_the_dashboard_name_only_metrics_the_worker_serves(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = new_topic(kafka_bootstrap, partitions=1)
    worker = Worker(worker_env(kafka_bootstrap, topic, {"CHATBRIDGE_DATABASE": str(tmp_path / "store.db")}), tmp_path)
    try:
        served = served_names(worker.http_port())
    finally:
        assert worker.stop() == 0, worker.output()[-3000:]
    assert "chatbridge_audit_chain_halted" in served  # registered once the store's audit keys sign checkpoints
    for source, expressions in _expressions().items():
        named = {name for expr in expressions for name in METRIC.findall(expr)}
        assert named, source
        assert named <= served, f"{source} names metrics no worker serves: {sorted(named - served)}"
