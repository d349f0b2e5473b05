"""Every panel of every shipped Grafana dashboard shows data from a real cluster.

`rayworks monitor up` starts a real Prometheus against the session's local cluster
(scraping through Ray's service-discovery file) before the e2e pipeline runs (prep,
train and serve as Ray jobs: the pipeline_run fixture in tests/conftest.py); the served model then gets traffic,
including requests the gate refuses. Every query of every panel in dashboards/*.json is
evaluated through Prometheus' HTTP API over the time the workloads ran
(``/api/v1/query_range``: what Grafana asks for a time-series panel, and the jobs' own
series end with their processes). Each must return at least one series. The only
exceptions: panels whose description says they need GPUs, on a cluster without any, and the
retrieval panels (their own check: tests/integration/test_retrieval.py).
"""

from __future__ import annotations

import time

import pytest
import requests

pytestmark = pytest.mark.e2e

SETTLE_S = 150  # series from a finished job reach Prometheus within a report interval plus a scrape


def prom(url: str, path: str, **params) -> dict:
    r = requests.get(f"{url}/api/v1/{path}", params=params, timeout=30)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{path} {params}: {r.status_code} {body}"
    return body["data"]


def test_monitor_up_scrapes_the_cluster_and_feeds_the_ray_dashboard(local_cluster, prometheus):
    from rayworks.cluster.auth import bearer_header

    # The Ray dashboard's own metrics views query this Prometheus (RAY_PROMETHEUS_HOST).
    r = requests.get(f"{local_cluster.dashboard_url}/api/prometheus_health",
                     headers=bearer_header(local_cluster.spec), timeout=30)
    assert r.status_code == 200, r.text
    # Every target Ray lists is scraped over loopback, and the node's metrics port is among them.
    deadline = time.time() + 60
    while True:
        targets = prom(prometheus, "targets")["activeTargets"]
        healthy = [t["scrapeUrl"] for t in targets if t["health"] == "up"]
        if any(f"127.0.0.1:{local_cluster.metrics_port}/" in u for u in healthy) or time.time() > deadline:
            break
        time.sleep(2)
    assert any(f"127.0.0.1:{local_cluster.metrics_port}/" in u for u in healthy), targets
    assert all(u.startswith("http://127.0.0.1:") for u in (t["scrapeUrl"] for t in targets)), targets
    # `monitor up` again is a no-op that still succeeds.
    again = local_cluster.rayworks("monitor", "up", str(local_cluster.spec_path), timeout=120)
    assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr


def _serve_traffic(base_url: str, key: str, model: str) -> None:
    from openai import OpenAI

    c = OpenAI(base_url=f"{base_url}/v1", api_key=key, max_retries=0)
    for i in range(6):
        c.completions.create(model=model, prompt=f"def f{i}(", max_tokens=12)
    for _ in c.completions.create(model=model, prompt="import os", max_tokens=12, stream=True):
        pass
    c.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    # What the gate refuses: a wrong key (401) and a request for a model that is not served (4xx).
    bad = requests.post(f"{base_url}/v1/completions", json={"model": model, "prompt": "x"},
                        headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert bad.status_code == 401, bad.text
    invalid = requests.post(f"{base_url}/v1/completions", json={"model": "nope", "prompt": "x"},
                            headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert 400 <= invalid.status_code < 500, invalid.text


def _cluster_has_gpus(url: str) -> bool:
    res = prom(url, "query", query='sum(ray_resources{Name="GPU"})')["result"]
    return bool(res) and float(res[0]["value"][1]) > 0


def _missing(gen, url: str, start: float, gpus: bool) -> list[str]:
    missing = []
    for name, model in gen.committed_dashboards().items():
        for panel, target in gen.iter_queries(model):
            if not gpus and gen.GPU_ONLY in panel.get("description", ""):
                continue
            if gen.RETRIEVAL_ONLY in panel.get("description", ""):  # the e2e pipeline serves no index: these
                continue  # are checked with real embed jobs and retrieval traffic in tests/integration/test_retrieval.py
            expr = gen.concrete(target["expr"])
            data = prom(url, "query_range", query=expr, start=start, end=time.time(), step="5s")
            if not data["result"]:
                missing.append(f"{name} / {panel['title']} [{target['refId']}]: {expr}")
    return missing


@pytest.mark.timeout(1200)  # the first pipeline run, if this test is first to ask for it
def test_every_panel_of_every_dashboard_shows_data(prometheus, pipeline_run, dashboard_generator):
    first = pipeline_run.first
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    _serve_traffic(pipeline_run.base_url, pipeline_run.keys.read_text().split()[0], pipeline_run.model_id)
    gpus = _cluster_has_gpus(prometheus)
    deadline = time.time() + SETTLE_S
    while True:
        missing = _missing(dashboard_generator, prometheus, pipeline_run.started - 60, gpus)
        if not missing or time.time() > deadline:
            break
        time.sleep(10)
    assert not missing, "panels without data (a panel that can never show data is a bug):\n" + "\n".join(missing)
