"""Shared fixtures: one local Ray cluster per test session, on its own ports.

Ports come from RAYWORKS_TEST_PORT_BASE (default 27000) so several checkouts or
developers can run suites side by side: gcs=base, dashboard=base+1,
metrics=base+2, serve=base+3, client=base+4, agent=base+5; the head's
dashboard queries a Prometheus at base+90 (started by tests/e2e/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PORT_BASE = int(os.environ.get("RAYWORKS_TEST_PORT_BASE", "27000"))

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
               "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}.items():
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


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None


def pytest_collection_modifyitems(config, items):
    if not has_gpu():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for it in items:
            if "gpu" in it.keywords:
                it.add_marker(skip)


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
        "serve": {"host": "127.0.0.1", "port": base + 3},
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
