"""`rayworks monitor`: argument parsing and the checks made before anything starts."""

from __future__ import annotations

import pytest
import yaml

from rayworks.client import monitor
from rayworks.client.cli import build_parser
from rayworks.config.cluster import ClusterSpec
from rayworks.errors import ConfigError


def _spec(**over) -> ClusterSpec:
    d = {"name": "mon", "head": {"num_cpus": 2, "memory_gb": 4}, "storage": {"uri": "/tmp/rw-mon-artifacts"},
         "local": {"temp_dir": "/tmp/rw-mon"}}
    d.update(over)
    return ClusterSpec.model_validate(d)


def test_cli_has_monitor_up_and_down():
    a = build_parser().parse_args(["monitor", "up", "spec.yaml", "--data-dir", "/tmp/p", "--restart-head"])
    assert a.func is monitor.cmd_up and a.spec == "spec.yaml" and a.data_dir == "/tmp/p" and a.restart_head
    a = build_parser().parse_args(["monitor", "down"])
    assert a.func is monitor.cmd_down and a.spec is None


def test_default_url_is_where_the_ray_dashboard_looks():
    # A head started without RAY_PROMETHEUS_HOST queries localhost:9090 (Ray's default).
    assert monitor.prometheus_url(_spec()) == "http://127.0.0.1:9090"
    assert monitor.prometheus_url(_spec(metrics={"prometheus_url": "http://127.0.0.1:27590/"})) == "http://127.0.0.1:27590"


def test_discovery_file_follows_the_temp_dir():
    assert monitor.discovery_file("/tmp/rw-mon") == "/tmp/rw-mon/prom_metrics_service_discovery.json"


@pytest.mark.parametrize("url", ["http://0.0.0.0:9090", "http://10.0.0.5:9090", "https://127.0.0.1:9090",
                                 "http://127.0.0.1"])
def test_local_prometheus_binds_to_loopback_only(url):
    with pytest.raises(ConfigError, match="prometheus_url"):
        monitor.start_prometheus(_spec(metrics={"prometheus_url": url}))


def test_cloud_specs_are_pointed_at_the_head_node_config():
    spec = _spec(provider={"type": "kubernetes", "namespace": "ml"}, storage={"uri": "s3://b/p"}, local={})
    with pytest.raises(ConfigError, match="dashboards/prometheus/prometheus.yml"):
        monitor.start_prometheus(spec)


def test_loopback_relabel_keeps_the_port():
    text = monitor.render_prometheus_config("/tmp/x.json", loopback=True)
    relabel = yaml.safe_load(text)["scrape_configs"][0]["relabel_configs"]
    assert relabel == [{"source_labels": ["__address__"], "regex": ".+:([0-9]+)",
                        "target_label": "__address__", "replacement": "127.0.0.1:$1"}]
    assert "relabel_configs" not in yaml.safe_load(monitor.render_prometheus_config("/tmp/x.json", loopback=False))[
        "scrape_configs"][0]
