"""The MLflow server rayworks runs beside a local cluster (``rayworks tracking up|down|status``).

MLflow's own server (``python -m mlflow server``), nothing in front of it:

- backend store: SQLite, ``{storage}/mlflow/mlflow.db`` (runs, params, metrics, the model
  registry); on object storage the database stays on this machine
  (``$RAYWORKS_HOME/tracking/<cluster>/``: SQLite needs a local file);
- artifact root: ``{storage}/mlflow/artifacts``, served by the server itself
  (``--serve-artifacts``), so jobs upload over HTTP and need no access to that folder;
- bound to ``tracking.host`` (127.0.0.1) on ``tracking.port``; off loopback, MLflow's
  basic-auth app is on, its admin login taken from ``MLFLOW_TRACKING_USERNAME`` /
  ``MLFLOW_TRACKING_PASSWORD`` in the shell that starts it, new users get no permission.

The server runs in its own session (process group) and its pid is written to
``server.pid`` beside the database; ``down`` stops that group only if the pid still is an
MLflow server on this backend store, so a pid reused by another process is never signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rayworks import storage
from rayworks.config.base import is_loopback_host
from rayworks.config.tracking import PASSWORD_VAR, USER_VAR
from rayworks.errors import ClusterError, ConfigError

PID_FILE = "server.pid"
STATE_FILE = "server.json"
LOG_FILE = "server.log"


def paths(spec) -> dict[str, str]:
    """Where the server of ``spec`` keeps its database, artifacts, pid file and log."""
    root = storage.join(spec.storage.uri, "mlflow")
    if storage.is_remote(spec.storage.uri):
        home = Path(os.environ.get("RAYWORKS_HOME", Path.home() / ".rayworks")).expanduser()
        local = str(home / "tracking" / spec.name)
    else:
        local = root
    return {"dir": local, "db": os.path.join(local, "mlflow.db"), "artifacts": storage.join(root, "artifacts"),
            "pid": os.path.join(local, PID_FILE), "state": os.path.join(local, STATE_FILE),
            "log": os.path.join(local, LOG_FILE), "auth_ini": os.path.join(local, "basic_auth.ini"),
            "auth_db": os.path.join(local, "basic_auth.db")}


def server_command(spec) -> list[str]:
    """The exact ``mlflow server`` command line for a spec (no secret in it)."""
    t, p = spec.tracking, paths(spec)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{p['db']}",
           "--artifacts-destination", p["artifacts"], "--serve-artifacts", "--host", t.host, "--port", str(t.port),
           "--workers", str(t.workers)]
    if not is_loopback_host(t.host):
        cmd += ["--app-name", "basic-auth"]
    return cmd


def health(url: str, timeout_s: float = 2.0) -> bool:
    """True when an MLflow server answers ``/health`` at ``url``."""
    import requests

    try:
        r = requests.get(f"{url}/health", timeout=timeout_s)
        return r.status_code == 200 and r.text.strip() == "OK"
    except requests.RequestException:
        return False


def _ours(pid: int, db: str) -> bool:
    """The process ``pid`` is an MLflow server on this backend store (Linux /proc)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    args = [a.decode(errors="replace") for a in cmdline]
    return "mlflow" in " ".join(args) and f"sqlite:///{db}" in args


def read_pid(spec) -> int | None:
    """The pid rayworks started for this spec's server, if that process still is that server."""
    p = paths(spec)
    try:
        pid = int(Path(p["pid"]).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _ours(pid, p["db"]) else None


def _auth_env(spec, p: dict[str, str]) -> dict[str, str]:
    """Basic auth's config file (0600) and Flask secret for a server bound off loopback."""
    import secrets

    user, password = os.environ.get(USER_VAR), os.environ.get(PASSWORD_VAR)
    if not user or not password:
        raise ConfigError(f"tracking.host={spec.tracking.host!r} turns on MLflow's basic auth: export {USER_VAR} "
                          f"and {PASSWORD_VAR} (the admin login; jobs get them sealed) before `rayworks tracking up`")
    ini = (f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///{p['auth_db']}\n"
           f"admin_username = {user}\nadmin_password = {password}\nauthorization_function = "
           "mlflow.server.auth:authenticate_request_basic_auth\n")
    fd = os.open(p["auth_ini"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(ini)
    return {"MLFLOW_AUTH_CONFIG_PATH": p["auth_ini"], "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}


def up(spec, timeout_s: float = 300, quiet: bool = False) -> dict:
    """Starts the spec's MLflow server unless it runs already; returns its state (url, pid, paths).

    Raises:
        ConfigError: the spec has an external ``tracking.uri``, tracking is off, or a login is missing.
        ClusterError: the port answers for another server, or the server did not come up.
    """
    t = spec.tracking
    if not t.enabled:
        raise ConfigError(f"tracking.enabled is false in spec {spec.name!r}; nothing to start")
    if t.uri:
        raise ConfigError(f"spec {spec.name!r} tracks to an external server ({t.uri}); rayworks starts none")
    if spec.provider.type != "local":
        raise ConfigError(f"rayworks runs an MLflow server only beside a local cluster; spec {spec.name!r} is "
                          f"provider.type={spec.provider.type}: set tracking.uri to your MLflow server")
    p, url = paths(spec), t.client_uri()
    pid = read_pid(spec)
    if pid and health(url):
        if not quiet:
            print(f"mlflow for {spec.name!r} is already running: {url} (pid {pid})")
        return {**json.loads(Path(p["state"]).read_text()), "already_running": True}
    if health(url):
        raise ClusterError(f"another MLflow server already answers at {url}; stop it, or set tracking.port in "
                           "the spec to a free port")
    os.makedirs(p["dir"], exist_ok=True)
    storage.makedirs(p["artifacts"])
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    if not is_loopback_host(t.host):
        env.update(_auth_env(spec, p))
    cmd = server_command(spec)
    with open(p["log"], "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd=p["dir"])
    Path(p["pid"]).write_text(f"{proc.pid}\n")
    state = {"name": spec.name, "pid": proc.pid, "url": url, "backend_store": f"sqlite:///{p['db']}",
             "artifact_root": p["artifacts"], "log": p["log"], "basic_auth": not is_loopback_host(t.host),
             "started_at": time.time()}
    Path(p["state"]).write_text(json.dumps(state, indent=2))
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            Path(p["pid"]).unlink(missing_ok=True)
            tail = Path(p["log"]).read_text(errors="replace")[-1500:]
            raise ClusterError(f"mlflow server exited with code {proc.returncode}; last log lines:\n{tail}")
        if health(url):
            if not quiet:
                print(f"mlflow for {spec.name!r} is up: {url}")
                print(f"  backend store: sqlite:///{p['db']}")
                print(f"  artifacts:     {p['artifacts']}")
            return state
        time.sleep(0.5)
    _stop_group(proc.pid)
    raise ClusterError(f"mlflow server did not answer {url}/health within {timeout_s:.0f}s; see {p['log']}")


def _stop_group(pid: int, timeout_s: float = 20) -> None:
    """SIGTERM, then SIGKILL, to the process group ``pid`` leads (the server and its workers)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                return
            try:  # reap it when it is our child (the tests start it in-process)
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.2)


def down(spec, quiet: bool = False) -> bool:
    """Stops the server :func:`up` started for the spec; False when none of ours is running."""
    p = paths(spec)
    pid = read_pid(spec)
    if pid is None:
        if not quiet:
            print(f"no MLflow server started by rayworks is running for {spec.name!r}; nothing to stop")
        Path(p["pid"]).unlink(missing_ok=True)
        return False
    _stop_group(pid)
    Path(p["pid"]).unlink(missing_ok=True)
    if not quiet:
        print(f"mlflow for {spec.name!r} stopped (pid {pid})")
    return True


def status(spec) -> dict:
    """Where tracking goes for the spec and whether it answers."""
    from rayworks.tracking import tracking_uri

    url = tracking_uri(spec)
    managed = spec.tracking.enabled and spec.tracking.uri is None and spec.provider.type == "local"
    return {"uri": url, "managed": managed, "pid": read_pid(spec) if managed else None,
            "healthy": bool(url) and health(url), "paths": paths(spec) if managed else None}
