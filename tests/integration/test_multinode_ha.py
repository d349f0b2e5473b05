"""Head loss on the multi-node cluster: the GCS is SIGKILLed while a Serve app with 2 replicas on 2
`cpu` nodes answers a steady request stream through the cluster's Serve port.

The session cluster runs with ``head.fault_tolerance: redis`` (tests/multinode_fixture.py):
rayworks started a redis-server for it and runs the head under rayworks.cluster.supervisor,
which starts a killed GCS again; the new GCS reloads the cluster from Redis and every raylet
reconnects. Figures (seconds, counts) are printed with `-s`; no test asserts on time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import requests

from tests.multinode_fixture import GROUP, GROUP_CPUS
from tests.secretscan import files_holding

pytestmark = pytest.mark.integration
APP = "gcsha"
REPLICAS = 2


class HAApp:
    """A small Serve app: 2 replicas, each holding a whole `cpu` node (2 CPUs; the head has 1).

    The same interface as tests/multinode_serve.py's MultiNodeApp (complete, replica_states,
    replica_nodes), without a model: what is under test is Serve's routing and Ray's control plane.
    """

    def __init__(self, url: str, dashboard_url: str):
        self.url, self.dashboard_url = url, dashboard_url

    def complete(self, prompt: str = "def", timeout: float = 60):
        return requests.post(f"{self.url}/{APP}", json={"prompt": prompt}, timeout=timeout,
                             headers={"Connection": "close"})  # a fresh connection each: every listener takes turns

    def ok(self, r) -> bool:
        return r.status_code == 200 and r.json().get("echo") == "def"

    def replica_states(self) -> dict[str, int]:
        from ray import serve

        app = serve.status().applications.get(APP)
        deps = list(app.deployments.values()) if app else []
        return {getattr(k, "value", str(k)): v for k, v in (deps[0].replica_states or {}).items()} if deps else {}

    def replica_nodes(self) -> list[str]:
        from ray.util.state import list_actors

        return sorted(a.node_id for a in list_actors(address=self.dashboard_url, limit=10000,
                                                     filters=[("state", "=", "ALIVE")], raise_on_missing_output=False)
                      if a.class_name == f"ServeReplica:{APP}:Echo")


@pytest.fixture(scope="module")
def ha_app(ray_on_multinode):
    """Deployed by this module and deleted at its end, so later modules get the nodes back."""
    import ray
    from ray import serve

    mc = ray_on_multinode

    @serve.deployment(num_replicas=REPLICAS, ray_actor_options={"num_cpus": GROUP_CPUS})
    class Echo:
        async def __call__(self, request):
            body = await request.json()
            return {"echo": body.get("prompt"), "node": ray.get_runtime_context().get_node_id()}

    serve.start(http_options={"host": "127.0.0.1", "port": mc.spec.serve.port})
    t0 = time.time()
    serve.run(Echo.bind(), name=APP, route_prefix=f"/{APP}")
    _figure("serve app with 2 replicas on 2 new nodes deployed (s)", time.time() - t0)
    yield HAApp(f"http://127.0.0.1:{mc.spec.serve.port}", mc.spec.dashboard_url)
    serve.delete(APP)


def _figure(name: str, value: float) -> None:
    print(f"[multinode figure] {name}: {value:.1f}")


def _gcs_args(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _cluster_answers(spec) -> dict | None:
    """The autoscaler's state from GCS, or None while GCS does not answer."""
    from rayworks.cluster import multinode

    try:
        return multinode.cluster_status(spec)
    except Exception:  # noqa: BLE001 - any failure to reach GCS means "not back yet"
        return None


@pytest.mark.timeout(900)  # the app's fixture launches two nodes
def test_gcs_killed_under_a_request_stream_comes_back_and_the_app_keeps_answering(ray_on_multinode, ha_app):
    import ray

    from rayworks.cluster import local, redis
    from rayworks.cluster.auth import auth_env

    app, mc = ha_app, ray_on_multinode
    spec = mc.spec
    assert app.replica_states() == {"RUNNING": REPLICAS}
    replica_nodes = app.replica_nodes()
    workers_before = {n["node_id"] for n in mc.workers()}
    assert len(set(replica_nodes)) == REPLICAS and set(replica_nodes) <= workers_before
    sup_file = local.supervisor_status_file(spec)
    sup = json.loads(sup_file.read_text())
    gcs_pid, restarts_before = sup["gcs_pid"], len(sup["restarts"])
    args = _gcs_args(gcs_pid)
    assert args[0].endswith("/gcs_server") and f"--gcs_server_port={spec.local.gcs_port}" in args, args

    results: list[tuple[float, float, int, str]] = []  # (start, end, status, detail); -1: no answer
    stop = threading.Event()

    def stream():  # one client, short completions back to back: one is always in flight
        while not stop.is_set():
            t0 = time.time()
            try:
                r = app.complete(timeout=60)
                ok = app.ok(r)
                results.append((t0, time.time(), 200 if ok else r.status_code or -2, "" if ok else r.text[:200]))
            except Exception as exc:  # noqa: BLE001 - a dropped connection is a failed request too
                results.append((t0, time.time(), -1, repr(exc)[:200]))

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    try:
        mc.wait_for(lambda: sum(r[2] == 200 for r in results) >= 5, timeout_s=120)
        t_kill = time.time()
        os.kill(gcs_pid, signal.SIGKILL)
        # Back: the supervisor started a new GCS, and it answers the autoscaler SDK.
        restarted = mc.wait_for(lambda: (len((s := json.loads(sup_file.read_text()))["restarts"]) > restarts_before
                                         and s), timeout_s=60, every_s=0.05)
        after = mc.wait_for(lambda: _cluster_answers(spec), timeout_s=60, every_s=0.1)
        t_back = time.time()
        n_back = len(results)
        mc.wait_for(lambda: sum(r[2] == 200 for r in results[n_back:]) >= 5, timeout_s=120)
    finally:
        stop.set()
        thread.join(timeout=90)

    new = restarted["restarts"][-1]
    assert new["dead_pid"] == gcs_pid and new["new_pid"] == restarted["gcs_pid"] != gcs_pid
    # Requests through the outage: those in flight at the kill or started before GCS answered again.
    through = [r for r in results if r[0] < t_back and r[1] > t_kill]
    failed = [r for r in results if r[2] != 200]
    _figure("GCS SIGKILL -> supervisor started a new GCS (s)", new["started_at"] - t_kill)
    _figure("GCS SIGKILL -> GCS answers the autoscaler SDK (s)", t_back - t_kill)
    _figure("requests overlapping the GCS outage", len(through))
    _figure("failed requests during the GCS test", len(failed))
    _figure("requests during the GCS test", len(results))
    assert through and not failed, failed[:5]

    # The cluster recovered: the same worker nodes alive, found in Redis (none dead, none new), and
    # Ray's own `ray status` answers with our token.
    workers_after = {n["node_id"] for n in after["nodes"] if n["group"] == GROUP and n["state"] in ("active", "idle")}
    assert workers_before <= workers_after, (workers_before, after)
    assert not any(n["node_id"] in workers_before and n["state"] == "dead" for n in after["nodes"])
    proc = subprocess.run([str(Path(sys.executable).with_name("ray")), "status", f"--address={mc.address}"],
                          env={**os.environ, **auth_env(spec)}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "Active:" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    # `rayworks status` says the head restarted its GCS, and which pid replaced which.
    proc = subprocess.run([str(Path(sys.executable).with_name("rayworks")), "status", str(mc.spec_path)],
                          env=dict(os.environ), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"GCS restarts: {len(restarted['restarts'])}" in proc.stdout, proc.stdout[-2000:]
    assert f"(pid {new['dead_pid']} -> {new['new_pid']})" in proc.stdout, proc.stdout[-2000:]
    # New work is scheduled through the new GCS; the app kept its replicas where they were.
    assert ray.get(ray.remote(lambda: 42).options(num_cpus=0).remote(), timeout=120) == 42
    assert app.replica_states() == {"RUNNING": REPLICAS}
    assert app.replica_nodes() == replica_nodes
    assert app.ok(app.complete())

    # The Redis password: only in rayworks' two 0600 files, in no log, session file or state of the cluster.
    password = redis.read_password(local.STATE_DIR, spec).encode()
    private = {str(redis.paths(local.STATE_DIR, spec)[k]) for k in ("password", "conf")}
    assert set(files_holding(local.STATE_DIR, password)) == private
    assert files_holding(Path(spec.local.temp_dir), password) == []
    assert files_holding(mc.storage, password) == []
