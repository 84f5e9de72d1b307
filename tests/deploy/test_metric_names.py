"""The Grafana dashboard and the alert rules use only metrics a real server exports.

A server is started, asked a few requests (successes, errors, a refused key), and its /metrics is
scraped with the admin key. Every metric name in every PromQL expression of
deploy/grafana/engramdb.json and deploy/prometheus/alerts.yml must be in that scrape, and every
``status`` an alert matches on must be an error code the server can report.

The cluster's series (``CLUSTER_METRICS``: etcd session, members, per-peer RPCs) exist only on a
cluster node: those names are checked against the scrape of a real node of a real two-node cluster
(etcd + ``engramdb serve`` nodes, ``engramdb.cluster.local.LocalCluster``) instead.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from engramdb.server.metrics import CLUSTER_METRICS
from integration.conftest import ADMIN_KEY

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "engramdb.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
# Series Prometheus itself records for every scrape, not exported by the server.
SCRAPE_SERIES = {"up"}
# Every series name the cluster's families can give; a name here is looked for on a cluster node.
CLUSTER_SERIES = {f + suffix for f in CLUSTER_METRICS for suffix in ("", "_total", "_bucket", "_sum", "_count")}

_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "avg", "avg_over_time", "bottomk", "ceil", "changes", "clamp",
    "clamp_max", "clamp_min", "count", "count_over_time", "count_values", "delta", "deriv", "exp", "floor",
    "group", "histogram_quantile", "holt_winters", "idelta", "increase", "irate", "label_join",
    "label_replace", "last_over_time", "ln", "log2", "log10", "max", "max_over_time", "min", "min_over_time",
    "predict_linear", "quantile", "quantile_over_time", "rate", "resets", "round", "scalar", "sort",
    "sort_desc", "sqrt", "stddev", "stddev_over_time", "stdvar", "sum", "sum_over_time", "time", "timestamp",
    "topk", "vector", "label_values",
}  # fmt: skip
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset"}
_IDENT = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)")


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression (or a Grafana ``label_values(...)`` query)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings: label values, regexes
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, Grafana's $__rate_interval
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\boffset\s+\w+", "", text)
    text = re.sub(r"\b\d+(\.\d+)?(e[+-]?\d+)?\b", "", text)  # numbers, 1e9 included
    names = set()
    for m in _IDENT.finditer(text):
        word = m.group(1)
        follows = text[m.end() :].lstrip()[:1]
        if word in _KEYWORDS or (word in _FUNCTIONS and follows == "("):
            continue
        if word == "instance" and follows in (")", ","):
            continue  # label_values(metric, instance)
        names.add(word)
    return names


def test_metric_names_parser() -> None:
    assert metric_names('sum by (op, le) (rate(a_bucket{job="x", op=~"b|c"}[$__rate_interval]))') == {"a_bucket"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(h_bucket[5m]))) > 2") == {"h_bucket"}
    assert metric_names("x < 2 * 1024 * 1e9 and on(instance) y offset 5m") == {"x", "y"}
    assert metric_names('predict_linear(d{job="e"}[6h], 24 * 3600) < 0') == {"d"}
    assert metric_names('label_values(u{job="engramdb"}, instance)') == {"u"}
    assert metric_names("sum(rate(s_sum[1m])) / sum(rate(s_count[1m])) unless up == 0") == {"s_sum", "s_count", "up"}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if t.get("expr"))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for var in dash["templating"]["list"]:
        q = var.get("query")
        if var["type"] == "query":
            exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def alert_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def exported_names(text: str) -> set[str]:
    """Every series name the exposition can hold, including families with no sample yet."""
    names = set()
    for fam in text_string_to_metric_families(text):
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
        if fam.type == "counter":
            names.add(fam.name + "_total")
        elif fam.type == "histogram":
            names.update(fam.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> str:
    from integration.conftest import start_server

    sp = start_server(tmp_path_factory.mktemp("metrics") / "data")
    try:
        with sp.client() as c:
            assert c.post("/v1/collections", json={"name": "notes", "dimension": 2}).status_code == 201
            r = c.post("/v1/collections/notes/records", json={"records": [{"id": "a", "vector": [1.0, 0.0]}]})
            assert r.status_code == 200, r.text
            c.post("/v1/collections/notes/search", json={"vector": [1.0, 0.0], "k": 1})
            c.get("/v1/collections/missing")
        httpx.get(sp.base_url + "/v1/collections", headers={"Authorization": "Bearer edb_wrong_key_123456789"})
        httpx.get(sp.base_url + "/ready")
        r = httpx.get(sp.base_url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert r.status_code == 200, r.text
        return r.text
    finally:
        sp.stop()


@pytest.mark.parametrize(
    ("source", "exprs"), [("dashboard", dashboard_exprs()), ("alerts", alert_exprs())], ids=["dashboard", "alerts"]
)
def test_every_metric_in_the_expressions_is_exported(scrape: str, source: str, exprs: list[str]) -> None:
    assert exprs
    exported = exported_names(scrape) | SCRAPE_SERIES
    used = {name: expr for expr in exprs for name in metric_names(expr) if name not in CLUSTER_SERIES}
    assert used, source
    missing = {name: expr for name, expr in used.items() if name not in exported}
    assert missing == {}


@pytest.fixture(scope="module")
def cluster_scrape(tmp_path_factory: pytest.TempPathFactory) -> str:
    """/metrics of a node of a real cluster (etcd + 2 nodes; the names do not depend on the size)."""
    import shutil

    from engramdb.cluster.local import LocalCluster

    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian package `etcd-server`; .ci/run installs it)")
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), 2, admin_key=ADMIN_KEY, default_replication_factor=2)
    cluster.start()
    try:
        auth = {"Authorization": f"Bearer {ADMIN_KEY}"}
        url = cluster.node(0).url
        r = httpx.post(url + "/v1/collections", json={"name": "notes", "dimension": 2}, headers=auth)
        assert r.status_code == 201, r.text
        r = httpx.post(
            url + "/v1/collections/notes/records", json={"records": [{"id": "a", "vector": [1.0, 0.0]}]}, headers=auth
        )
        assert r.status_code == 200, r.text
        r = httpx.get(url + "/metrics", headers=auth)
        assert r.status_code == 200, r.text
        return r.text
    finally:
        cluster.stop()


def test_cluster_metrics_in_the_alerts_are_exported_by_a_cluster_node(cluster_scrape: str) -> None:
    exported = exported_names(cluster_scrape)
    assert set(CLUSTER_METRICS) <= exported  # the list is what a node exports ...
    used = {name: expr for expr in alert_exprs() + dashboard_exprs() for name in metric_names(expr)}
    cluster_used = {name: expr for name, expr in used.items() if name in CLUSTER_SERIES}
    # ... and every cluster family has an alert (the dashboard may add panels).
    assert {n.removesuffix("_bucket") for n in cluster_used} >= {
        "engramdb_cluster_etcd_session",
        "engramdb_cluster_members",
        "engramdb_peer_rpc_duration_seconds",
        "engramdb_peer_breaker_open",
    }
    missing = {name: expr for name, expr in cluster_used.items() if name not in exported}
    assert missing == {}


def test_a_renamed_metric_would_be_caught(scrape: str) -> None:
    exported = exported_names(scrape)
    assert "engramdb_operations_total" in exported and "engramdb_operation_duration_seconds_bucket" in exported
    assert metric_names("rate(engramdb_operation_total[5m])") - exported == {"engramdb_operation_total"}


def _error_codes() -> set[str]:
    codes = {"ok", "internal"}
    for path in (ROOT / "src" / "engramdb").rglob("*.py"):
        codes.update(re.findall(r'\bcode\s*[:=]\s*(?:ClassVar\[str\]\s*=\s*)?"([a-z_]+)"', path.read_text()))
    return codes


def test_alerts_match_statuses_the_server_reports() -> None:
    codes = _error_codes()
    assert {"storage_full", "corrupt_data", "storage_unavailable", "index_unavailable"} <= codes
    for expr in alert_exprs():
        for op, value in re.findall(r'\bstatus\s*(=~|=)\s*"([^"]*)"', expr):
            if "engramdb_operations_total" not in expr:
                continue  # HTTP statuses (5..) are numbers, not codes
            values = value.split("|") if op == "=~" else [value]
            assert set(values) <= codes, expr
