"""Shared fixtures: one local Ray cluster per test session, on its own ports.

Ports come from RAYWORKS_TEST_PORT_BASE (default 27000) so several checkouts or
developers can run suites side by side: gcs=base, dashboard=base+1,
metrics=base+2, serve=base+3, client=base+4, agent=base+5; the head's
dashboard queries a Prometheus at base+90 (started by the prometheus fixture below).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.multinode_fixture import RELEASE_EARLY
from tests.multinode_fixture import multinode_cluster, ray_on_multinode  # noqa: F401  (session multi-node cluster)
from tests.multinode_serve import multinode_app  # noqa: F401  (its served app: 2 replicas on 2 nodes)

REPO = Path(__file__).resolve().parents[1]
PORT_BASE = int(os.environ.get("RAYWORKS_TEST_PORT_BASE", "27000"))

# ---------------------------------------------------------------- tiers: order, markers, timeouts
# One pytest session runs every tier (so the session cluster and the e2e pipeline run are
# shared), fastest first: a broken unit test fails in seconds, not after the e2e tier.
TIERS = ("unit", "integration", "e2e")
UNIT_TIMEOUT_S = 120  # the ini's global timeout is sized for integration tests; unit tests get less


def _tier(item) -> str:
    try:
        parts = Path(item.path).resolve().relative_to(REPO / "tests").parts
    except ValueError:
        return "unit"
    return parts[0] if parts[0] in TIERS else "unit"


def pytest_collection_modifyitems(config, items):
    unmarked = sorted({str(Path(i.path).relative_to(REPO)) for i in items
                       if _tier(i) != "unit" and i.get_closest_marker(_tier(i)) is None})
    if unmarked:  # `-m "not e2e"` and CI's tier split depend on every module carrying its marker
        raise pytest.UsageError("modules without their tier's marker (add `pytestmark = pytest.mark.<tier>`): "
                                + ", ".join(unmarked))
    items.sort(key=lambda i: TIERS.index(_tier(i)))  # stable: file order is kept inside a tier
    for i in items:
        if _tier(i) == "unit" and i.get_closest_marker("timeout") is None:
            i.add_marker(pytest.mark.timeout(UNIT_TIMEOUT_S))


_unit_failures: list[str] = []


def pytest_runtest_logreport(report):
    if report.failed and report.nodeid.startswith("tests/unit/"):
        _unit_failures.append(report.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    yield
    # Stop at the tier boundary when the unit tier failed: no cluster is started for a broken tree.
    if (_unit_failures and _tier(item) == "unit" and nextitem is not None and _tier(nextitem) != "unit"
            and not item.config.getoption("--keep-going-after-unit-failures")):
        item.session.shouldstop = (f"{len(_unit_failures)} unit test(s) failed; integration and e2e not run "
                                   "(--keep-going-after-unit-failures runs them anyway)")


_last_user: dict[str, list[str]] = {}


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """Releases a heavy session fixture (RELEASE_EARLY) after the last test that uses it.

    The multi-node cluster and its served app hold about 9 GiB (two vLLM engines, its raylets):
    kept to the end of the session, they left the later serve and e2e modules too little memory
    on a 24 GiB machine (Ray's OOM killer took their replicas and the deployments never became
    healthy). The list is the session's final one, after -k/-m deselection.
    """
    try:
        return (yield)
    finally:
        for name in list(RELEASE_EARLY):  # registered when the fixture is first set up
            if name not in _last_user:
                _last_user[name] = [i.nodeid for i in item.session.items if name in i.fixturenames][-1:]
            if _last_user[name] == [item.nodeid]:
                RELEASE_EARLY.pop(name)()


def pytest_addoption(parser):
    parser.addoption("--keep-going-after-unit-failures", action="store_true",
                     help="run the integration and e2e tiers even when a unit test failed")

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
               "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false",
               # The session's local head binds to loopback (rayworks.cluster.auth.LOCAL_NODE_ENV): a
               # driver in this process must resolve 127.0.0.1 as 127.0.0.1 to reach it. Ray reads
               # this when it is imported, so it is set here, before any test imports ray.
               "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               # Every cluster the tests start has token auth on, and Ray reads the mode once per
               # process: a unit test that touches Ray first must not fix it at 'disabled' for the
               # integration tests that may follow in the same process (`pytest tests`).
               "RAY_AUTH_MODE": "token"}.items():
    os.environ.setdefault(_k, _v)


def load_dashboard_generator():
    """dashboards/generate.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("rayworks_dashboards_generate", REPO / "dashboards" / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def dashboard_generator():
    return load_dashboard_generator()


def make_spec_dict(name: str, storage: Path, base: int = PORT_BASE) -> dict:
    """A local cluster spec on the test port block."""
    return {
        "name": name,
        "provider": {"type": "local"},
        "head": {"num_cpus": 8, "num_gpus": 0, "memory_gb": 16},
        "storage": {"uri": str(storage)},
        "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                     "VLLM_NO_USAGE_STATS": "1", "RAY_USAGE_STATS_ENABLED": "0",
                                     "TOKENIZERS_PARALLELISM": "false"}},
        "dashboard": {"host": "127.0.0.1", "port": base + 1},
        "metrics": {"export_port": base + 2, "prometheus_url": f"http://127.0.0.1:{base + 90}"},
        # The session's own MLflow server (started by `rayworks up`), never a demo's on :5000.
        "tracking": {"port": base + 92},
        "serve": {"host": "127.0.0.1", "port": base + 3, "haproxy_stats_port": base + 6,
                  "haproxy_metrics_port": base + 7, "fallback_proxy_port": base + 9},
        "local": {"gcs_port": base, "ray_client_port": base + 4, "dashboard_agent_listen_port": base + 5,
                  "temp_dir": f"/tmp/rw{base}", "object_store_memory_gb": 1.5},
    }


@dataclass
class LocalCluster:
    spec_path: Path
    spec: object
    storage: Path
    address: str
    dashboard_url: str
    serve_port: int
    metrics_port: int
    env: dict = field(default_factory=dict)

    def rayworks(self, *args: str, timeout: float = 900, check: bool = False) -> subprocess.CompletedProcess:
        """Runs the real `rayworks` CLI against this cluster."""
        proc = subprocess.run([str(Path(sys.executable).with_name("rayworks")), *args], cwd=REPO,
                              env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"rayworks {' '.join(args)} -> {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="session")
def local_cluster(tmp_path_factory) -> LocalCluster:
    """A real local Ray head (token auth, metrics export) for the whole session."""
    from rayworks.cluster import local
    from rayworks.config.cluster import load_cluster_spec

    root = tmp_path_factory.mktemp("cluster")
    storage = root / "artifacts"
    storage.mkdir()
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(make_spec_dict(f"rwtest{PORT_BASE}", storage)))
    spec = load_cluster_spec(spec_path)
    local.down(spec, quiet=True)  # a leftover from a killed session
    local.up(spec, timeout_s=180)
    cluster = LocalCluster(spec_path=spec_path, spec=spec, storage=storage,
                           address=f"127.0.0.1:{PORT_BASE}", dashboard_url=spec.dashboard_url,
                           serve_port=PORT_BASE + 3, metrics_port=PORT_BASE + 2,
                           env={"RAY_AUTH_MODE": "token"})
    os.environ["RAY_AUTH_MODE"] = "token"
    yield cluster
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    finally:
        local.down(spec, quiet=True)


@pytest.fixture(scope="module")
def ray_on_cluster(local_cluster):
    """This test process connected to the session cluster as a Ray driver."""
    import ray

    if not ray.is_initialized():
        ray.init(address=local_cluster.address, log_to_driver=False)
    yield local_cluster


# ---------------------------------------------------------------- the e2e pipeline run
# One real pipeline run (prep -> train -> serve through `rayworks run`) per session, with
# a real Prometheus (`rayworks monitor up`) scraping the cluster while it runs:
# tests/e2e/test_dashboards.py checks every dashboard panel against the series those jobs
# left, tests/e2e/test_pipeline.py checks the run itself, then reruns it. Running prep,
# training and serving once for both saves a full pipeline's time. Either may run first.
MODEL_ID = "e2e-tiny"
ROUTE = "/e2e"
SERVE_APP = "e2e-serve"


@dataclass
class PipelineRun:
    pipe: str           # the pipeline YAML
    keys: Path          # the API key file the pipeline created
    started: float      # time.time() before the first run
    first: object       # CompletedProcess of the first `rayworks run`
    base_url: str       # http://127.0.0.1:<serve port>/e2e
    model_id: str = MODEL_ID
    app: str = SERVE_APP


@pytest.fixture(scope="session")
def prometheus(local_cluster, tmp_path_factory):
    """A real Prometheus started by `rayworks monitor up` for the session cluster."""
    url = local_cluster.spec.metrics.prometheus_url
    assert url, "tests/conftest.py gives the session spec metrics.prometheus_url (port base+90)"
    data = tmp_path_factory.mktemp("prometheus")
    proc = local_cluster.rayworks("monitor", "up", str(local_cluster.spec_path), "--data-dir", str(data), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield url
    local_cluster.rayworks("monitor", "down", str(local_cluster.spec_path), timeout=60)


def _extra_docs(path: Path) -> None:
    """Beside the python-docs corpus: exact duplicates and too-short documents the prep job must drop,
    one document per curation drop reason and one with PII to redact (tests/qualitydocs.py), and
    the evaluation set decontamination reads (eval.jsonl beside ``path``)."""
    import pydoc_data.topics as t

    from qualitydocs import EVAL_ROWS, PII_DOC, PLANTED

    docs = [t.topics[k] for k in sorted(t.topics)][:12]
    # A near-duplicate of docs[1] (~2,000 words, one changed: Jaccard of word 5-grams 0.99) for the
    # near_dup stage; it is no exact duplicate, so the exact counts stay as they were.
    words = docs[1].split(" ")
    mid = next(i for i in range(len(words) // 2, len(words)) if words[i].isalpha())
    near = " ".join(w + "s" if i == mid else w for i, w in enumerate(words))
    with open(path, "w") as f:
        for d in docs + docs[:4] + ["tiny", "x" * 3] + list(PLANTED.values()) + [PII_DOC, near]:
            f.write(json.dumps({"text": d}) + "\n")
    (path.parent / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in EVAL_ROWS))


def _e2e_curation(eval_path: Path) -> dict:
    """Every curation stage on, with thresholds the corpus passes and the planted documents fail."""
    from qualitydocs import E2E_CURATION

    return {**E2E_CURATION, "decontam": {**E2E_CURATION["decontam"], "path": str(eval_path),
                                         "text_fields": ["question", "answer"]}}


def pipeline_config(root: Path, spec_path: Path, keys: Path) -> dict:
    _extra_docs(root / "extra.jsonl")
    return {
        "kind": "pipeline", "name": "e2e", "cluster": str(spec_path),
        "corpus": {"source": "python-docs", "output": str(root / "corpus"), "size_mb": 1.5},
        "prep": {"kind": "prep", "name": "e2e-prep",
                 "inputs": [{"path": str(root / "corpus" / "*.jsonl"), "format": "jsonl"},
                            {"path": str(root / "extra.jsonl"), "format": "jsonl"}],
                 "clean": {"min_chars": 64}, "dedup": True, "near_dup": {},
                 **_e2e_curation(root / "eval.jsonl"),
                 "tokenizer": {"vocab_size": 512, "sample_mb": 1}, "seq_len": 64, "val_fraction": 0.05,
                 "unit_mb": 1, "execution": {"num_workers": 2}},
        "train": {"kind": "train", "name": "e2e-train", "model": {"preset": "tiny"},
                  "data": {"num_val_sequences": 32},
                  "deepspeed": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4,
                                "gradient_accumulation_steps": 1,
                                "optimizer": {"type": "AdamW", "params": {"lr": 0.003}},
                                "zero_optimization": {"stage": 2}},
                  # A CPU has no known peak FLOP/s: give one so the MFU panel has data too.
                  "scaling": {"num_workers": 2, "peak_flops_per_device": 1e11},
                  "run": {"num_steps": 24, "log_every_steps": 4, "eval_every_steps": 12,
                          "checkpoint_every_steps": 12}},
        # The promotion gate: scored against the model now serving; a worse one is not deployed
        # (tests/e2e/test_pipeline.py::test_gate_refuses_a_worse_model...). 0.5 nats of slack: the
        # rerun with 4 more steps must pass, a 1-step model (loss ~2 nats higher) must not.
        "eval": {"kind": "eval", "name": "e2e-eval",
                 "perplexity": {"split": "val", "max_sequences": 32, "batch_size": 8},
                 "harness": {"include_path": str(REPO / "jobs" / "configs" / "eval_tasks"),
                             "tasks": ["rw_facts_mc"], "limit": 16},
                 "gate": {"max_val_loss_regression": 0.5}},
        "serve": {"kind": "serve", "name": SERVE_APP,
                  "models": [{"id": MODEL_ID, "accelerator": "cpu",
                              "engine": {"max_model_len": 256, "dtype": "float32", "cpu_kvcache_space_gb": 1,
                                         "enforce_eager": True}}],
                  "http": {"route_prefix": ROUTE},
                  "auth": {"api_keys_file": str(keys)}},
        "smoke_test": {"prompt": "def ", "max_tokens": 8},
    }


@pytest.fixture(scope="session")
def pipeline_run(local_cluster, prometheus, tmp_path_factory):
    """The first `rayworks run` of the e2e pipeline, with Prometheus scraping throughout."""
    root = tmp_path_factory.mktemp("e2e")
    keys = root / "keys"
    pipe = root / "pipeline.yaml"
    pipe.write_text(yaml.safe_dump(pipeline_config(root, local_cluster.spec_path, keys), sort_keys=False))
    # The spec's MLflow server, as `rayworks up` starts it beside a cluster (the session cluster is
    # started through the library, without it): the pipeline's runs, nested stage runs and model
    # registry are checked in tests/e2e/test_pipeline.py. Integration tests before this ran with
    # the server down, which training must survive (it records the gap).
    from rayworks.tracking import server as mlflow_server

    mlflow_server.up(local_cluster.spec, quiet=True)
    started = time.time()
    first = local_cluster.rayworks("run", str(pipe), "--quiet", timeout=1500)
    yield PipelineRun(pipe=str(pipe), keys=keys, started=started, first=first,
                      base_url=f"http://127.0.0.1:{local_cluster.serve_port}{ROUTE}")
    # The app lives as long as the session's e2e tests need it (no test depends on another's
    # order). The e2e tier runs last and the session cluster stops right after: the delete is
    # asked for, not waited on (the replica's graceful shutdown would only delay that stop).
    import ray
    from ray import serve

    mlflow_server.down(local_cluster.spec, quiet=True)
    if not ray.is_initialized():
        ray.init(address=local_cluster.address, log_to_driver=False)
    serve.delete(SERVE_APP, _blocking=False)
