"""The Redis a local head's GCS keeps its state in (``head.fault_tolerance: redis``).

``rayworks up`` starts Debian's ``redis-server`` before the head, bound to 127.0.0.1 on
``local.redis_port`` with a password generated for this cluster, and ``rayworks down`` stops it
after the head. The password lives in two files under the cluster's state dir, both 0600 in a
0700 folder: ``password`` (read by the head supervisor, rayworks.cluster.supervisor) and
Redis's own config file (``requirepass``), so it is on no command line of ours and in no
environment, log or render. Ray itself then carries it on its daemons' command lines
(``--redis-password`` is Ray's only interface for it; see README).

No persistence (``save ""``, no AOF): Redis outlives GCS restarts, which is what it is for here;
a fresh ``up`` starts an empty Redis, so a new head never "recovers" an old cluster.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from rayworks.config.cluster import ClusterSpec
from rayworks.errors import ClusterError, ConfigError

HOST = "127.0.0.1"


def enabled(spec: ClusterSpec) -> bool:
    return spec.provider.type == "local" and spec.head.fault_tolerance == "redis"


def address(spec: ClusterSpec) -> str:
    return f"{HOST}:{spec.local.redis_port}"


def paths(state_dir: Path, spec: ClusterSpec) -> dict[str, Path]:
    d = state_dir / f"{spec.name}.redis"
    return {"dir": d, "conf": d / "redis.conf", "password": d / "password", "pid": d / "redis.pid",
            "log": d / "redis.log"}


def _write_private(path: Path, text: str) -> None:
    """Writes ``text`` to a new 0600 file (never through a link, never readable by others meanwhile)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def read_password(state_dir: Path, spec: ClusterSpec) -> str:
    return paths(state_dir, spec)["password"].read_text().strip()


def _binary() -> str:
    exe = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").is_file() else None)
    if not exe:
        raise ConfigError("head.fault_tolerance: redis needs redis-server (Debian/Ubuntu: apt-get install "
                          "redis-server; `make setup` installs it as root); or set head.fault_tolerance: none")
    return exe


def _ping(port: int, password: str, timeout_s: float = 2.0) -> str:
    """Redis's answer to AUTH + PING over RESP ('+OK\\r\\n+PONG\\r\\n' when it is ours and up)."""
    def bulk(*words: str) -> bytes:
        out = f"*{len(words)}\r\n".encode()
        for w in words:
            b = w.encode()
            out += b"$%d\r\n%s\r\n" % (len(b), b)
        return out

    with socket.create_connection((HOST, port), timeout=timeout_s) as s:
        s.sendall(bulk("AUTH", password) + bulk("PING"))
        data = b""
        while data.count(b"\r\n") < 2:
            chunk = s.recv(256)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1):
            return True
    except OSError:
        return False


def _ours(pid: int, spec: ClusterSpec) -> bool:
    """True when ``pid`` is this user's redis-server serving this spec's port (checked before any signal)."""
    try:
        if os.stat(f"/proc/{pid}").st_uid != os.getuid():
            return False
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    # redis-server rewrites its title to "redis-server 127.0.0.1:<port>".
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    return title.startswith(("redis-server", exe)) and f"{HOST}:{spec.local.redis_port}" in title


def running_pid(state_dir: Path, spec: ClusterSpec) -> int | None:
    try:
        pid = int(paths(state_dir, spec)["pid"].read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _ours(pid, spec) else None


def start(state_dir: Path, spec: ClusterSpec, timeout_s: float = 30) -> dict:
    """Starts this cluster's redis-server (a new password each time) unless ours already runs; returns its state."""
    p = paths(state_dir, spec)
    pid = running_pid(state_dir, spec)
    if pid:
        return {"pid": pid, "address": address(spec), "reused": True}
    port = spec.local.redis_port
    if _listening(port):
        raise ClusterError(f"something already listens on {HOST}:{port} (local.redis_port); stop it, or change "
                           "local.redis_port in the spec")
    exe = _binary()
    p["dir"].mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(p["dir"], 0o700)
    password = secrets.token_urlsafe(32)
    _write_private(p["password"], password + "\n")
    _write_private(p["conf"], "\n".join([
        f"bind {HOST}", f"port {port}", "protected-mode yes", f"requirepass {password}",
        "daemonize no", f'dir "{p["dir"]}"', 'save ""', "appendonly no", f'logfile "{p["log"]}"',
        "loglevel notice", "databases 1", ""]))
    proc = subprocess.Popen([exe, str(p["conf"])], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, cwd=p["dir"])
    p["pid"].write_text(f"{proc.pid}\n")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = p["log"].read_text(errors="replace")[-800:] if p["log"].is_file() else ""
            _forget(p)
            raise ClusterError(f"redis-server exited with code {proc.returncode}; {p['log']}:\n{tail}")
        try:
            if "+PONG" in _ping(port, password):
                return {"pid": proc.pid, "address": address(spec), "reused": False}
        except OSError:
            pass
        time.sleep(0.2)
    stop(state_dir, spec)
    raise ClusterError(f"redis-server did not answer on {HOST}:{port} within {timeout_s:.0f}s; see {p['log']}")


def _forget(p: dict[str, Path]) -> None:
    """Removes the files that hold the password, and the pid file (the log stays for debugging)."""
    for k in ("password", "conf", "pid"):
        p[k].unlink(missing_ok=True)


def stop(state_dir: Path, spec: ClusterSpec, timeout_s: float = 10) -> bool:
    """Stops the redis-server `start` started (pid file + command line checked); False if none ran."""
    p = paths(state_dir, spec)
    if not p["dir"].is_dir():
        return False
    pid = running_pid(state_dir, spec)
    if pid:
        for sig, wait in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.time() + wait
            while time.time() < deadline and _ours(pid, spec):
                try:  # our own child when `up` ran in this process
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                time.sleep(0.1)
            if not _ours(pid, spec):
                break
    _forget(p)
    return bool(pid)
