"""The session's multi-node cluster: a 1-CPU head whose own autoscaler launches `cpu` nodes on demand.

Ports: RAYWORKS_TEST_PORT_BASE + 120..129 (the one-node session cluster uses base..base+90); Redis on +128,
Serve's fallback proxy (beside HAProxy, default 8500 for every cluster) on +129.
Worker group ``cpu``: min 0, max 3, 2 logical CPUs each, idle timeout 0.25 min, so a task that
asks for 2 CPUs cannot run on the head and makes Ray's autoscaler add a node.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

PORT_BASE = int(os.environ.get("RAYWORKS_TEST_PORT_BASE", "27000"))
MN_BASE = PORT_BASE + 120
GROUP = "cpu"
GROUP_CPUS = 2
GROUP_MAX = 3
# Session fixtures' release functions: tests/conftest.py pops and calls one after the last test that
# uses the fixture (the session's end would be too late for the modules after it); the fixture's
# own teardown calls it only if it is still here.
RELEASE_EARLY: dict = {}


def multinode_spec_dict(storage: Path, base: int = MN_BASE, fault_tolerance: str = "none") -> dict:
    return {
        "name": f"rwmn{base}",
        "provider": {"type": "local"},
        "head": {"num_cpus": 1, "memory_gb": 4, "fault_tolerance": fault_tolerance},
        "worker_groups": [{"name": GROUP, "role": "general", "num_cpus": GROUP_CPUS, "memory_gb": 2,
                           "min_workers": 0, "max_workers": GROUP_MAX}],
        "autoscaler": {"idle_timeout_minutes": 0.25},
        "storage": {"uri": str(storage)},
        "runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                     "VLLM_NO_USAGE_STATS": "1", "RAY_USAGE_STATS_ENABLED": "0",
                                     "TOKENIZERS_PARALLELISM": "false"}},
        "dashboard": {"host": "127.0.0.1", "port": base + 1},
        "metrics": {"export_port": base + 2},
        # No MLflow server for this cluster: its tests are about nodes (and :5000 may be a demo's).
        "tracking": {"enabled": False},
        "serve": {"host": "127.0.0.1", "port": base + 3, "haproxy_stats_port": base + 6,
                  "haproxy_metrics_port": base + 7, "fallback_proxy_port": base + 9},
        "local": {"gcs_port": base, "ray_client_port": base + 4, "dashboard_agent_listen_port": base + 5,
                  "temp_dir": f"/tmp/rw{base}", "object_store_memory_gb": 0.5, "redis_port": base + 8},
    }


@dataclass
class MultiNodeCluster:
    spec_path: Path
    spec: object
    storage: Path
    address: str

    def status(self) -> dict:
        from rayworks.cluster import multinode

        return multinode.cluster_status(self.spec)

    def workers(self, states=("active", "idle")) -> list[dict]:
        """Worker nodes (not the head) in the given autoscaler states."""
        return [n for n in self.status()["nodes"] if n["group"] == GROUP and n["state"] in states]

    def wait_for(self, what, timeout_s: float = 180, every_s: float = 0.5):
        """Polls ``what()`` until it is truthy; returns it (fails the test at the deadline)."""
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            got = what()
            if got:
                return got
            time.sleep(every_s)
        raise AssertionError(f"not reached within {timeout_s}s; autoscaler state: {self.status()}")


def leftover_pids(temp_dir: str) -> list[int]:
    """Processes whose command line or environment names the cluster's temp dir."""
    key = temp_dir.encode() + b"/"
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if key in (d / "cmdline").read_bytes() or key in (d / "environ").read_bytes():
                out.append(int(d.name))
        except OSError:
            continue
    return [p for p in out if p != os.getpid()]


@pytest.fixture(scope="session")
def multinode_cluster(tmp_path_factory) -> MultiNodeCluster:
    """A real multi-node local cluster for the session; `rayworks down` at the end must leave nothing."""
    from rayworks.cluster import local
    from rayworks.config.cluster import load_cluster_spec

    root = tmp_path_factory.mktemp("multinode")
    storage = root / "artifacts"
    storage.mkdir()
    spec_path = root / "spec.yaml"
    # GCS fault tolerance on (rayworks runs Redis and a GCS supervisor): test_multinode_ha.py kills the GCS.
    spec_path.write_text(yaml.safe_dump(multinode_spec_dict(storage, fault_tolerance="redis")))
    spec = load_cluster_spec(spec_path)
    local.down(spec, quiet=True)  # a leftover from a killed session
    local.up(spec, timeout_s=300, quiet=True)
    def release():
        import ray

        if ray.is_initialized():
            ray.shutdown()
        local.down(spec, quiet=True)
        left = leftover_pids(spec.local.temp_dir)
        assert not left, f"`rayworks down` left processes of the multi-node cluster: {left}"

    RELEASE_EARLY["multinode_cluster"] = release
    yield MultiNodeCluster(spec_path=spec_path, spec=spec, storage=storage, address=f"127.0.0.1:{MN_BASE}")
    if RELEASE_EARLY.pop("multinode_cluster", None):  # not released early (no later test ran)
        release()


@pytest.fixture(scope="module")
def ray_on_multinode(multinode_cluster):
    """This process as a driver of the multi-node cluster (any other connection is closed first)."""
    import ray

    from rayworks.cluster.auth import apply_auth_env

    if ray.is_initialized():
        ray.shutdown()
    apply_auth_env(multinode_cluster.spec)
    ray.init(address=multinode_cluster.address, log_to_driver=False)
    yield multinode_cluster
    ray.shutdown()
