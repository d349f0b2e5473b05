"""The local cluster: one Ray head on this machine, started from the spec.

``up`` runs ``ray start --head --block`` in its own process group (so ``down`` stops
exactly what ``up`` started, never another Ray on the machine), with the dashboard
on the spec's host, metrics export on and token auth on, then waits until the Jobs
API answers with our token.

Every port of a local head listens on loopback. Ray resolves ``--node-ip-address=127.0.0.1``
to the machine's address (``services.resolve_ip_for_localhost``) and then binds the GCS,
raylet, agents, metrics export and Ray Client to it or to all interfaces. Ray's single-machine
mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the default on macOS/Windows) makes the node's
address 127.0.0.1, and the GCS/raylet gRPC servers then listen on loopback only. What Ray
cannot narrow is listed in :data:`OFF_LOOPBACK`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from rayworks.cluster import multinode, redis
from rayworks.cluster.auth import (DashboardDown, auth_env, bearer_header, ensure_token, forget_verified,
                                   verify_dashboard)
from rayworks.config.cluster import ClusterSpec
from rayworks.errors import ClusterError, ConfigError

STATE_DIR = Path(os.environ.get("RAYWORKS_HOME", Path.home() / ".rayworks")) / "clusters"
# Listeners of a local cluster that Ray 2.60 binds to all interfaces whatever the node address,
# with why that is acceptable. Keys are what tests/integration/test_security_listeners.py allows.
OFF_LOOPBACK = {
    "haproxy_stats": "serve.ha_proxy only: Ray's HAProxy template hard-codes `bind *:<stats port>`; a read-only "
                     "stats page (no control socket over HTTP). Firewall it, or set serve.ha_proxy: false",
    "haproxy_metrics": "serve.ha_proxy only: Ray's HAProxy template hard-codes `bind :<metrics port>`; read-only "
                       "Prometheus exporter. Firewall it, or set serve.ha_proxy: false",
    "serve_replica": "serve.ha_proxy only: Ray Serve forces replica HTTP ports to 0.0.0.0 in HAProxy mode "
                     "(serve/_private/constants.py) so other nodes' HAProxy can reach them; every request there "
                     "passes the serve API-key gate",
    "dashboard": "only when the spec sets dashboard.host off loopback: token auth guards it",
    "serve_http": "only when the spec sets serve.host off loopback: the serve API-key gate guards it",
}


def state_file(spec: ClusterSpec) -> Path:
    return STATE_DIR / f"{spec.name}.json"


def read_state(spec: ClusterSpec) -> dict | None:
    p = state_file(spec)
    return json.loads(p.read_text()) if p.is_file() else None


def probe(spec: ClusterSpec, timeout_s: float = 3.0) -> str:
    """'up' if the Jobs API answers with our token, 'auth' if it refuses it, 'down' otherwise.

    'foreign' when something that is not this user's Ray holds the dashboard port: the token is
    only sent after :func:`verify_dashboard` says it is.
    """
    try:
        verify_dashboard(spec, timeout_s)  # never cached: probe is how a caller learns the listener changed
    except DashboardDown:
        return "down"
    except ClusterError:
        return "foreign"
    try:
        hdr = bearer_header(spec, verify=False)  # verified just above
    except ClusterError:
        hdr = {}  # no token here yet: a running cluster will answer 401
    try:
        r = requests.get(f"{spec.dashboard_url}/api/jobs/", headers=hdr, timeout=timeout_s)
    except requests.RequestException:
        return "down"
    if r.status_code in (401, 403):
        return "auth"
    return "up" if r.status_code == 200 else "down"


def head_command(spec: ClusterSpec) -> list[str]:
    """The `ray start --head` command line for the spec's local head."""
    h = spec.head
    resources = dict(h.resources)
    cmd = [
        str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
        f"--port={spec.local.gcs_port}",
        f"--num-cpus={h.num_cpus}", f"--num-gpus={h.num_gpus}",
        f"--memory={int(h.memory_gb * 1024**3)}",
        f"--object-store-memory={int(spec.local.object_store_memory_gb * 1024**3)}",
        "--include-dashboard=true",
        f"--dashboard-host={spec.dashboard.host}", f"--dashboard-port={spec.dashboard.port}",
        f"--dashboard-agent-listen-port={spec.local.dashboard_agent_listen_port}",
        f"--ray-client-server-port={spec.local.ray_client_port}",
        f"--metrics-export-port={spec.metrics.export_port}",
        f"--temp-dir={spec.local.temp_dir}",
        "--disable-usage-stats",
    ]
    if resources:
        cmd.append(f"--resources={json.dumps(resources)}")
    if multinode.is_multinode(spec):  # worker groups: the head's autoscaler launches them (multinode.py)
        cmd.append(f"--autoscaling-config={multinode.config_path(STATE_DIR, spec)}")
    return cmd


def head_env(spec: ClusterSpec) -> dict[str, str]:
    """The environment of the local head's `ray start`.

    What the spec decides (Serve's ingress, metrics, token auth and loopback binding) goes last,
    so neither the shell's environment nor ``runtime_env.env_vars`` can change it (the spec
    refuses those names at load, see ``rayworks.config.envcheck.OWNED``; this holds for a spec
    changed after loading too).
    """
    env = dict(os.environ)
    # Jobs run `python ...`: make that the interpreter rayworks runs under.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "VLLM_NO_USAGE_STATS": "1",
                "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(spec.runtime_env.env_vars)
    env.update(spec.serve.node_env())
    if spec.metrics.prometheus_url:
        env["RAY_PROMETHEUS_HOST"] = spec.metrics.prometheus_url
    if spec.metrics.grafana_url:
        env["RAY_GRAFANA_HOST"] = spec.metrics.grafana_url
    env.update(auth_env(spec))  # RAY_AUTH_MODE, the token path, and the loopback switch of a local node
    if multinode.is_multinode(spec):
        env.update(multinode.head_env(spec))
    if redis.enabled(spec):  # the GCS keeps its state there; the password goes by file (supervisor.py)
        env["RAY_REDIS_ADDRESS"] = redis.address(spec)
    return env


def supervised_command(spec: ClusterSpec) -> list[str]:
    """head.fault_tolerance: redis: the head supervisor, which runs `ray start --head` and restarts a dead GCS."""
    start = [a for a in head_command(spec) if a != "--block"]  # --block would kill the head when the GCS dies
    return [sys.executable, "-m", "rayworks.cluster.supervisor",
            f"--password-file={redis.paths(STATE_DIR, spec)['password']}", f"--gcs-port={spec.local.gcs_port}",
            f"--temp-dir={spec.local.temp_dir}", f"--status-file={supervisor_status_file(spec)}", "--", *start]


def supervisor_status_file(spec: ClusterSpec) -> Path:
    return STATE_DIR / f"{spec.name}.supervisor.json"


def head_ft_summary(spec: ClusterSpec) -> str | None:
    """One line for `rayworks status` on a local head with head.fault_tolerance: redis; None otherwise."""
    if spec.provider.type != "local" or spec.head.fault_tolerance != "redis":
        return None
    try:
        doc = json.loads(supervisor_status_file(spec).read_text())
    except (OSError, ValueError):
        return "head fault tolerance: redis; the GCS supervisor has written no status (is the cluster up?)"
    restarts = doc.get("restarts", [])
    last = (f", last at {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(restarts[-1]['started_at']))} "
            f"(pid {restarts[-1]['dead_pid']} -> {restarts[-1]['new_pid']})") if restarts else ""
    return (f"head fault tolerance: redis; GCS pid {doc.get('gcs_pid')}, supervisor pid {doc.get('supervisor_pid')}, "
            f"GCS restarts: {len(restarts)}{last}")


def up(spec: ClusterSpec, timeout_s: float = 180, quiet: bool = False) -> dict:
    """Starts the local head unless it is already running; returns its state."""
    if spec.provider.type != "local":
        raise ConfigError(f"`rayworks up` starts local clusters; spec {spec.name!r} is provider.type="
                          f"{spec.provider.type}. Render it (`rayworks cluster render`) and use `ray up` or KubeRay")
    ensure_token(spec)
    forget_verified(spec.dashboard_url)
    status = probe(spec)
    if status == "up":
        st = read_state(spec) or {}
        if not quiet:
            print(f"cluster {spec.name!r} is already running: dashboard {spec.dashboard_url}")
        return {**st, "already_running": True, "dashboard_url": spec.dashboard_url}
    if status == "auth":
        raise ClusterError(f"a Ray dashboard at {spec.dashboard_url} refused our token: another cluster holds "
                           "that port. Stop it, or change dashboard.port in the spec")
    if status == "foreign":
        raise ClusterError(f"something that is not this user's Ray listens on {spec.dashboard_url}; "
                           "stop it, or change dashboard.port in the spec")
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        try:
            return _start(spec, timeout_s, quiet)
        except ClusterError as exc:
            # Ray gives the raylet a fixed 30 s to register, and the dashboard a fixed wait to come up;
            # on a loaded 2-core box either can miss it.
            if not any(m in str(exc) for m in ("timed out during startup", "logs/dashboard.log")) or attempt == 2:
                raise
            print(f"ray start timed out registering the node (machine busy); retrying ({attempt + 2}/3)")
    raise AssertionError("unreachable")


def _start(spec: ClusterSpec, timeout_s: float, quiet: bool) -> dict:
    """One `ray start --head --block` in its own process group, waited on until healthy."""
    log_path = STATE_DIR / f"{spec.name}.log"
    if multinode.is_multinode(spec):
        multinode.config_path(STATE_DIR, spec).write_text(json.dumps(multinode.autoscaling_config(spec), indent=2))
    cmd = head_command(spec)
    if redis.enabled(spec):
        redis.start(STATE_DIR, spec)
        supervisor_status_file(spec).unlink(missing_ok=True)
        cmd = supervised_command(spec)
    log = open(log_path, "ab")
    proc = subprocess.Popen(cmd, env=head_env(spec), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    state = {"name": spec.name, "pid": proc.pid, "pgid": proc.pid, "dashboard_url": spec.dashboard_url,
             "gcs_address": f"127.0.0.1:{spec.local.gcs_port}", "temp_dir": spec.local.temp_dir,
             "log": str(log_path), "started_at": time.time()}
    state_file(spec).write_text(json.dumps(state, indent=2))
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-1500:]
            down(spec, quiet=True)  # reap whatever the failed start left in its process group
            raise ClusterError(f"`ray start` exited with code {proc.returncode}; last log lines:\n{tail}")
        if probe(spec) == "up" and _gcs_ready(spec):
            if not quiet:
                print(f"cluster {spec.name!r} is up")
                print(f"  dashboard: {spec.dashboard_url}")
                print(f"  submit:    rayworks submit jobs/configs/prep.yaml   "
                      f"(or RAY_AUTH_MODE=token ray job submit --address {spec.dashboard_url} -- python ...)")
            return state
        time.sleep(1.0)
    down(spec, quiet=True)
    raise ClusterError(f"cluster {spec.name!r} did not become healthy within {timeout_s:.0f}s; see {log_path}")


def _gcs_ready(spec: ClusterSpec) -> bool:
    try:
        r = requests.get(f"{spec.dashboard_url}/nodes?view=summary", headers=bearer_header(spec, verify=False),
                         timeout=3)  # called right after probe() verified the listener
        return r.status_code == 200 and bool(r.json().get("data", {}).get("summary"))
    except (requests.RequestException, ValueError):
        return False


def stop_process_group(pgid: int, timeout_s: float) -> None:
    """SIGTERM a process group, wait up to timeout_s, then SIGKILL what is left.

    The wait ends early once the raylet and every worker are gone: what is then left (the GCS,
    the autoscaler monitor and `ray start --block` itself, which stops them one by one with
    waits of its own) holds no work, and took another ~20 s to go on its own.
    """
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline, idle_since = time.time() + wait, None
        while time.time() < deadline and (live := _live(pgid, group=True)):
            if sig == signal.SIGTERM and not any(_does_work(p) for p in live):
                idle_since = idle_since or time.time()
                if time.time() - idle_since > 2:
                    break
            time.sleep(0.3)


def _does_work(pid: int) -> bool:
    """A raylet or a Ray worker (whose graceful exit matters: logs, metrics, child processes)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return False
    return cmd.startswith("ray::") or cmd.endswith("/raylet") or "default_worker.py" in cmd


def _live(ident: int, group: bool) -> list[int]:
    """Live processes of process group (or session) ``ident``, this one excluded.

    Zombies do not count: a head started by this process stays one until `down` reaps it,
    and kill(0) on its group keeps succeeding (a down would wait out every timeout for it).
    """
    pids = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, session, ...
        if fields[0] != "Z" and int(fields[2 if group else 3]) == ident and int(d.name) != os.getpid():
            pids.append(int(d.name))
    return pids


def _reap(pid: int) -> None:
    """Collects ``pid`` if it is an exited child of this process (the head, when `up` ran in-process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def session_pids(sid: int) -> list[int]:
    """Live processes of session ``sid`` (Linux /proc; empty elsewhere), this one excluded."""
    return _live(sid, group=False)


def stop_session(sid: int, timeout_s: float) -> None:
    """Stops what is left in session ``sid`` after its process group went (SIGTERM, then SIGKILL).

    `up` starts Ray as a session leader; some of its children move to process groups of
    their own (Serve's HAProxy is one: it outlived `ray stop` and kept the Serve port).
    """
    for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
        pids = session_pids(sid)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while time.time() < deadline and session_pids(sid):
            time.sleep(0.3)


def down(spec: ClusterSpec, timeout_s: float = 30, quiet: bool = False) -> bool:
    """Stops what `up` started (its session, then its Redis); returns False if nothing was running."""
    stopped = _down_head(spec, timeout_s, quiet)
    # After the head (a GCS outlives no Redis it needs); whatever the spec says now: it may have changed since `up`.
    if redis.stop(STATE_DIR, spec):
        supervisor_status_file(spec).unlink(missing_ok=True)
        if not quiet:
            print(f"redis for {spec.name!r} stopped")
    return stopped


def _down_head(spec: ClusterSpec, timeout_s: float, quiet: bool) -> bool:
    st = read_state(spec)
    if not st:
        if not quiet:
            print(f"cluster {spec.name!r} was not started by rayworks (no state file); nothing to stop")
        return False
    if not is_our_ray(st, spec):
        # A stale file (the head died, the machine rebooted): its pid may now be anyone's process.
        state_file(spec).unlink(missing_ok=True)
        _reap(int(st.get("pgid") or 0))  # our own exited child, if `up` ran in this process
        if not quiet:
            print(f"cluster {spec.name!r} is not running (stale state file, process group {st.get('pgid')} is not "
                  "this cluster's Ray); removed the state file, signalled nothing")
        return False
    forget_verified(spec.dashboard_url)
    stop_process_group(st["pgid"], timeout_s)
    stop_session(st["pgid"], timeout_s)  # up's Popen(start_new_session=True): session id == pgid == pid
    _reap(st["pgid"])
    state_file(spec).unlink(missing_ok=True)
    # Killed processes leave Ray's address file behind; a later plain ray.init() would then
    # wait on a dead GCS instead of starting its own cluster.
    addr = Path(st.get("temp_dir") or spec.local.temp_dir) / "ray_current_cluster"
    if addr.is_file() and addr.read_text().strip().endswith(f":{spec.local.gcs_port}"):
        addr.unlink(missing_ok=True)
    if not quiet:
        print(f"cluster {spec.name!r} stopped")
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def is_our_ray(st: dict, spec: ClusterSpec) -> bool:
    """True when the state file's process group (or session) still runs this cluster's Ray.

    Checked before any signal: a pid from a stale file may since belong to an unrelated
    process. Ours means: owned by this user, and some process of the group is a Ray process
    of this cluster: `ray start --head` with this temp dir, or a Ray daemon whose arguments
    name a session under it.
    """
    pgid = int(st.get("pgid") or 0)
    temp_dir = str(st.get("temp_dir") or spec.local.temp_dir).rstrip("/")
    if pgid <= 1:
        return False
    for pid in set(_live(pgid, group=True)) | set(_live(pgid, group=False)):
        try:
            if os.stat(f"/proc/{pid}").st_uid != os.getuid():
                continue
        except OSError:
            continue
        args = _cmdline(pid)
        text = " ".join(args)
        head = "start" in args and "--head" in args and f"--temp-dir={temp_dir}" in args
        daemon = "ray" in text and (f"{temp_dir}/session_" in text or f"={temp_dir}/" in text)
        if head or daemon:
            return True
    return False


def status(spec: ClusterSpec) -> dict:
    """Nodes, resources and jobs of the spec's cluster (via the dashboard API)."""
    s = probe(spec)
    if s != "up":
        raise ClusterError(f"cluster {spec.name!r} is not reachable at {spec.dashboard_url} "
                           f"({'token refused' if s == 'auth' else 'not running'}); start it with `rayworks up`")
    hdr = bearer_header(spec)
    nodes = requests.get(f"{spec.dashboard_url}/nodes?view=summary", headers=hdr, timeout=10).json()
    jobs = requests.get(f"{spec.dashboard_url}/api/jobs/", headers=hdr, timeout=10).json()
    return {"nodes": nodes.get("data", {}).get("summary", []), "jobs": jobs}
