"""Every socket the test session's local cluster listens on is on loopback, or allow-listed with a reason.

The cluster runs tasks, an actor and a Serve app behind Serve's HAProxy while the test lists
the listening sockets of every process of its session (``rayworks up`` starts Ray as a session
leader: the GCS, raylet, agents, workers, Serve's controller, replicas and HAProxy all belong
to it), plus any process whose arguments name the cluster's temp dir. Each one must be on
loopback or match an entry of ``rayworks.cluster.local.OFF_LOOPBACK``. Each HTTP listener
where Ray supports token auth must answer 401/403 without the token and with a wrong one.
"""

from __future__ import annotations

import ipaddress
import os
import time

import pytest
import requests

pytestmark = pytest.mark.integration


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _session_processes(local_cluster):
    import psutil

    from rayworks.cluster import local

    sid = local.read_state(local_cluster.spec)["pgid"]
    temp_dir = local_cluster.spec.local.temp_dir
    procs = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            mine = os.getsid(p.pid) == sid or temp_dir in " ".join(p.info["cmdline"] or [])
        except (ProcessLookupError, PermissionError):
            continue
        if mine and p.pid != os.getpid():
            procs.append(p)
    return procs


def listeners(local_cluster) -> list[dict]:
    """(port, ip, pid, process name, cmdline) of every listening TCP socket of the cluster's processes."""
    import psutil

    out = []
    for p in _session_processes(local_cluster):
        try:
            conns = p.net_connections(kind="tcp")
            name, cmd = p.name(), " ".join(p.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                out.append({"port": c.laddr.port, "ip": c.laddr.ip, "pid": p.pid, "name": name, "cmd": cmd[:160]})
    return out


def allow_reason(sock: dict, spec) -> str | None:
    """The OFF_LOOPBACK entry that covers an off-loopback socket, or None."""
    from rayworks.cluster.local import OFF_LOOPBACK

    haproxy = "haproxy" in sock["name"] or "haproxy" in sock["cmd"]
    if spec.serve.ha_proxy and haproxy and sock["port"] == spec.serve.haproxy_stats_port:
        return OFF_LOOPBACK["haproxy_stats"]
    if spec.serve.ha_proxy and haproxy and sock["port"] == spec.serve.haproxy_metrics_port:
        return OFF_LOOPBACK["haproxy_metrics"]
    if spec.serve.ha_proxy and sock["name"].startswith("ray::ServeReplica"):
        return OFF_LOOPBACK["serve_replica"]
    return None


@pytest.fixture(scope="module")
def busy_cluster(ray_on_cluster):
    """The session cluster with workers, an actor and a Serve app (HAProxy mode) running."""
    import ray
    from ray import serve

    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    class Counter:
        def inc(self):
            return 1

    assert ray.get([square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
    counter = Counter.remote()
    assert ray.get(counter.inc.remote()) == 1

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    def hello(request):
        return "hello"

    had_serve = True
    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    except ValueError:
        had_serve = False
    spec = ray_on_cluster.spec
    serve.start(http_options={"host": "127.0.0.1", "port": spec.serve.port})
    serve.run(hello.bind(), name="rw-security-listeners", route_prefix="/rw-security-listeners")
    # HAProxy (re)binds its front door a moment after serve.run returns: wait until it serves.
    url = f"http://127.0.0.1:{spec.serve.port}/rw-security-listeners"
    for _ in range(120):
        try:
            if requests.get(url, timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.5)
    yield ray_on_cluster
    serve.delete("rw-security-listeners")
    if not had_serve:
        serve.shutdown()
    ray.kill(counter)


def test_every_listener_is_loopback_or_allow_listed(busy_cluster):
    spec = busy_cluster.spec
    expected = {spec.local.gcs_port, spec.dashboard.port, spec.metrics.export_port, spec.local.ray_client_port,
                spec.local.dashboard_agent_listen_port, spec.serve.port}
    if spec.serve.ha_proxy:  # HAProxy is seen too (the allow-list is exercised)
        expected |= {spec.serve.haproxy_stats_port, spec.serve.haproxy_metrics_port}
    # HAProxy reloads (a new process takes over the front door) whenever Serve's routes change,
    # e.g. as an earlier module's app goes away: list again until the whole cluster is in view.
    # Every listing taken is checked below, not only the last.
    seen = []
    for _ in range(30):
        socks = listeners(busy_cluster)
        seen.append(socks)
        if expected <= {s["port"] for s in socks}:
            break
        time.sleep(1)
    names = {s["name"] for s in socks}
    ports = {s["port"] for s in socks}
    # The listing sees the whole cluster: the GCS, the raylet, the agents, a worker and HAProxy.
    assert {"gcs_server", "raylet"} <= names, names
    assert any(n.startswith("ray::DashboardAgent") for n in names), names
    assert expected <= ports, sorted(ports)
    if spec.serve.ha_proxy:  # and the Serve replica (its port is allow-listed)
        assert any(n.startswith("ray::ServeReplica") for n in names), names
    off = [s for listing in seen for s in listing if not _loopback(s["ip"])]
    unexplained = [s for s in off if allow_reason(s, spec) is None]
    assert not unexplained, "listening off loopback without an allow-list entry: " + "; ".join(
        f"{s['ip']}:{s['port']} {s['name']} ({s['cmd'][:80]})" for s in unexplained)
    # Ray's own ports are all among the loopback ones (not merely allow-listed).
    for port in (spec.local.gcs_port, spec.dashboard.port, spec.metrics.export_port, spec.local.ray_client_port,
                 spec.local.dashboard_agent_listen_port):
        assert all(_loopback(s["ip"]) for s in socks if s["port"] == port), port


def test_http_listeners_with_ray_auth_refuse_requests_without_the_token(busy_cluster):
    spec = busy_cluster.spec
    socks = listeners(busy_cluster)
    agent_ports = {s["port"] for s in socks if s["name"].startswith("ray::RuntimeEnvAgent")}
    assert agent_ports, "the runtime env agent's HTTP port was not found"
    # (url, a path that is not public) for each HTTP server that takes Ray's token.
    targets = [(f"http://127.0.0.1:{spec.dashboard.port}", "/api/jobs/"),
               (f"http://127.0.0.1:{spec.dashboard.port}", "/nodes?view=summary"),
               (f"http://127.0.0.1:{spec.local.dashboard_agent_listen_port}", "/api/job_agent/jobs/"),
               (f"http://127.0.0.1:{spec.local.dashboard_agent_listen_port}", "/api/version")]
    targets += [(f"http://127.0.0.1:{p}", "/get_or_create_runtime_env") for p in sorted(agent_ports)]
    for base, path in targets:
        for headers in ({}, {"Authorization": "Bearer " + "0" * 32}):
            r = requests.get(base + path, headers=headers, timeout=10)
            assert r.status_code in (401, 403), f"{base}{path} with {headers or 'no token'} -> {r.status_code}"
    # With the token, the dashboard answers: the 401s above are the token check, not a broken server.
    from rayworks.cluster.auth import bearer_header

    ok = requests.get(f"{spec.dashboard_url}/api/jobs/", headers=bearer_header(spec), timeout=10)
    assert ok.status_code == 200


def test_the_serve_app_is_reachable_on_loopback_only_through_haproxy(busy_cluster):
    spec = busy_cluster.spec
    r = requests.get(f"http://127.0.0.1:{spec.serve.port}/rw-security-listeners", timeout=30)
    assert r.status_code == 200 and r.text == "hello"
    front = [s for s in listeners(busy_cluster) if s["port"] == spec.serve.port]
    assert front and all(_loopback(s["ip"]) for s in front), front


def test_ray_processes_run_with_the_specs_auth_and_loopback_settings(busy_cluster):
    """The GCS and raylet got what the spec decides, whatever the shell or env_vars said (applied last)."""
    env = {}
    for p in _session_processes(busy_cluster):
        if p.info["name"] in ("gcs_server", "raylet"):
            raw = open(f"/proc/{p.pid}/environ", "rb").read().split(b"\0")
            env[p.info["name"]] = dict(kv.decode(errors="replace").partition("=")[::2] for kv in raw if b"=" in kv)
    assert set(env) == {"gcs_server", "raylet"}, sorted(env)
    for name, e in env.items():
        assert (e.get("RAY_AUTH_MODE"), e.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")) == ("token", "0"), name


def test_job_client_for_an_explicit_address_verifies_the_real_dashboard(busy_cluster):
    """`rayworks jobs --address URL` (no spec): the listener check passes for this user's Ray, then the client works."""
    from rayworks.cluster.auth import forget_verified
    from rayworks.client.submit import client

    forget_verified(busy_cluster.dashboard_url)
    c = client(None, busy_cluster.dashboard_url)
    assert isinstance(c.list_jobs(), list)
