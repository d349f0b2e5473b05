"""The shipped Grafana dashboards and Prometheus config: current, complete, parseable.

No Ray here. Queries are parsed by Prometheus' own `promtool` (installed with the
`prometheus` package by `make setup`); that they return data is proven in
tests/e2e/test_dashboards.py against a real Prometheus.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import load_dashboard_generator

REPO = Path(__file__).resolve().parents[2]


gen = load_dashboard_generator()
MODELS = gen.committed_dashboards()
PANELS = [(name, p) for name, m in MODELS.items() for p in m["panels"] if p.get("type") != "row"]


def _promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool is not installed (it ships with Prometheus): run `make setup` "
                    "or `apt-get install -y prometheus`")
    return path


def test_committed_files_match_the_generator():
    stale = [str(p.relative_to(REPO)) for p in gen.stale_files()]
    assert not stale, f"out of date (run `python dashboards/generate.py`): {stale}"


def test_the_four_dashboards_ship():
    uids = {m["uid"] for m in MODELS.values()}
    assert uids == {"rayworks-cluster", "rayworks-prep", "rayworks-train", "rayworks-serve"}
    assert len({m["title"] for m in MODELS.values()}) == 4


def test_every_panel_has_a_title_unit_description_and_query():
    assert len(PANELS) >= 40
    for name, p in PANELS:
        where = f"{name}: panel {p.get('id')} {p.get('title')!r}"
        assert p.get("title", "").strip(), where
        assert p["fieldConfig"]["defaults"].get("unit"), f"{where} has no unit"
        assert len(p.get("description", "")) >= 30, f"{where}: describe what it shows for a user"
        assert p.get("targets"), f"{where} has no query"
        for t in p["targets"]:
            assert t.get("expr", "").strip() and t.get("refId"), where
            assert t["datasource"]["uid"] == "${datasource}", f"{where}: use the $datasource variable"


def test_panel_ids_are_unique_and_titles_distinct():
    for name, m in MODELS.items():
        ids = [p["id"] for p in m["panels"]]
        assert len(ids) == len(set(ids)), name
        titles = [p["title"] for p in m["panels"] if p["type"] != "row"]
        assert len(titles) == len(set(titles)), f"{name}: repeated titles"


def test_queries_use_ray_exported_names():
    # Ray prefixes ray.util.metrics names with ray_ (STACK.md pitfall 6): an unprefixed
    # rayworks_ name never has data.
    import re

    for name, m in MODELS.items():
        for p, t in gen.iter_queries(m):
            assert not re.search(r"(?<![a-z_])rayworks_", t["expr"]), f"{name} {p['title']}: {t['expr']}"


def test_every_query_parses_with_promtool(tmp_path):
    rules = []
    for name, m in MODELS.items():
        for i, (p, t) in enumerate(gen.iter_queries(m)):
            rules.append({"record": f"rayworks:check:{m['uid'].replace('-', '_')}_{i}", "expr": gen.concrete(t["expr"])})
    f = tmp_path / "rules.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run([_promtool(), "check", "rules", str(f)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{len(rules)} rules found" in proc.stdout


def test_concrete_replaces_grafana_variables():
    e = 'sum(rate(x{run=~"$run", a=~"${app}"}[$__rate_interval]))'
    assert gen.concrete(e) == 'sum(rate(x{run=~".*", a=~".*"}[1m]))'


@pytest.mark.parametrize("loopback", [False, True])
def test_prometheus_config_is_valid(tmp_path, loopback):
    from rayworks.client.monitor import render_prometheus_config

    f = tmp_path / "prometheus.yml"
    f.write_text(render_prometheus_config("/tmp/rw-test/prom_metrics_service_discovery.json", loopback=loopback))
    proc = subprocess.run([_promtool(), "check", "config", str(f)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cfg = yaml.safe_load(f.read_text())
    job = cfg["scrape_configs"][0]
    assert job["honor_labels"] is True  # keeps the rayworks `job` label (prep/train/serve)
    assert job["file_sd_configs"][0]["files"] == ["/tmp/rw-test/prom_metrics_service_discovery.json"]
    assert ("relabel_configs" in job) == loopback


def test_committed_prometheus_config_scrapes_rays_discovery_file():
    cfg = yaml.safe_load((REPO / "dashboards" / "prometheus" / "prometheus.yml").read_text())
    assert cfg["scrape_configs"][0]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
