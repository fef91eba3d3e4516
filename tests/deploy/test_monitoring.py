"""Prometheus and Grafana: every dashboard query and the HPA metric name series a live labs-api exposes."""

from __future__ import annotations

import json

import yaml

from tests.deploy.conftest import ROOT
from tests.deploy.metric_names import PROMETHEUS_SERIES, exposed_series, metrics_in

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))


def _exprs() -> list[tuple[str, str]]:
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            found += [(panel["title"], target["expr"]) for target in panel["targets"]]
    return found


def test_the_expression_reader_finds_metric_names_only() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, model) (rate(labs_x_bucket{status=~"4..|5..", a="b"}[5m])))'
    assert metrics_in(expr) == {"labs_x_bucket"}
    assert metrics_in("sum(rate(a_total[1m])) / sum(rate(b_total[1m]))") == {"a_total", "b_total"}


def test_every_dashboard_query_names_a_metric_labs_exposes(live_app) -> None:
    exposition = live_app.get("/metrics").text
    exposed = exposed_series(exposition)
    assert "labs_time_to_first_token_seconds_bucket" in exposed  # families without samples count too
    assert DASHBOARDS, "no dashboard"
    for title, expr in _exprs():
        names = metrics_in(expr)
        assert names, f"{title}: no metric in {expr}"
        unknown = names - exposed - PROMETHEUS_SERIES
        assert not unknown, f"{title}: {sorted(unknown)} not in labs' /metrics ({expr})"


def test_the_dashboard_shows_what_the_issue_asks_for() -> None:
    used = set().union(*(metrics_in(expr) for _, expr in _exprs()))
    for name in ("labs_generation_tokens_total", "labs_time_to_first_token_seconds_bucket",
                 "labs_time_per_output_token_seconds_bucket", "labs_requests_waiting", "labs_requests_running",
                 "labs_kv_cache_usage_ratio", "labs_http_requests_total", "labs_embedding_inputs_total"):
        assert name in used, name
    assert any('status=~"4..|5.."' in expr for _, expr in _exprs()), "no errors-by-status panel"


def test_the_dashboard_uses_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yaml").read_text())
    uids = {source["uid"] for source in provisioned["datasources"]}
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/labs.yaml").read_text())["providers"]
    assert [p["options"]["path"] for p in providers] == ["/var/lib/grafana/dashboards"]
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["datasource"]["uid"] in uids
            assert all(target["datasource"]["uid"] in uids for target in panel["targets"])


def test_prometheus_scrapes_the_route_and_port_labs_serves(live_app) -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "labs"]
    assert live_app.get(job["metrics_path"]).status_code == 200
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    targets = [target for group in job["static_configs"] for target in group["targets"]]
    assert "labs-api:8000" in targets
    for target in targets:
        service, port = target.split(":")
        assert service in compose["services"]
        assert any(mapping.endswith(f":{port}") for mapping in compose["services"][service]["ports"])


def test_the_hpa_scales_on_a_metric_labs_exposes(live_app) -> None:
    exposed = exposed_series(live_app.get("/metrics").text)
    hpa = yaml.safe_load((ROOT / "deploy/k8s/examples/hpa-queue-depth.yaml").read_text())
    (metric,) = hpa["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] in exposed
    adapter = yaml.safe_load((ROOT / "deploy/k8s/examples/prometheus-adapter-rules.yaml").read_text())
    for rule in adapter["rules"]["custom"]:
        assert metrics_in(rule["seriesQuery"]) <= exposed
