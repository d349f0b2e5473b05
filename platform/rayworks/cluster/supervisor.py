"""The head supervisor of a local head with ``head.fault_tolerance: redis``: restarts a dead GCS.

On KubeRay a dead GCS is brought back by the head pod's restart; on a local head nothing would
do it, so ``rayworks up`` runs this process (the session leader that ``rayworks down`` stops)
instead of ``ray start --head --block``:

1. It runs ``ray start --head`` without ``--block`` and adds ``--redis-password``, read from the
   0600 file rayworks.cluster.redis wrote (so the password is on no command line of ours; Ray
   puts it on its own daemons', which is Ray's interface). ``--block`` is left out on purpose:
   it kills every head process as soon as one of them dies, the GCS included.
2. It finds the head's ``gcs_server`` and keeps its command line, environment and working folder.
3. When the GCS exits (SIGKILL, a crash), it starts the same command again within a second: the
   same port, session, Redis and token. The new GCS loads the cluster from Redis, and the head's
   raylet, dashboard and autoscaler monitor and every worker raylet reconnect to it (they wait up
   to Ray's ``gcs_rpc_server_reconnect_timeout_s``, 60 s).

Why only the GCS and not the whole head: a local cluster's worker nodes are started by the
head's autoscaler monitor (Ray's fake multi-node provider), which knows them only in its memory.
Restarting the monitor would orphan them and make it hand out their node ids again. The GCS is
what "head loss" means for Ray's fault tolerance, and what KubeRay's recovery recovers.

Each restart is appended to ``<state dir>/<cluster>.supervisor.json`` (times and pids only).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.25
_stopping = False


def _on_term(signum, frame) -> None:  # `rayworks down` signals the whole process group
    global _stopping
    _stopping = True


def find_gcs(port: int, temp_dir: str) -> int | None:
    """The pid of this head's gcs_server: this user's, this session's, serving ``port`` under ``temp_dir``."""
    want_port, want_dir = f"--gcs_server_port={port}", f"--log_dir={temp_dir.rstrip('/')}/"
    sid = os.getsid(0)
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if d.stat().st_uid != os.getuid() or os.getsid(int(d.name)) != sid:
                continue
            args = (d / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except (OSError, ProcessLookupError):
            continue
        if args and args[0].endswith("/gcs_server") and want_port in args and any(a.startswith(want_dir) for a in args):
            return int(d.name)
    return None


def _alive(pid: int) -> bool:
    """Running and not a zombie (the first GCS is not our child: init reaps it, we only watch it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] != "Z"


def snapshot(pid: int) -> dict:
    """What it takes to start the same GCS again: command line, environment, working folder."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    env = dict(kv.split(b"=", 1) for kv in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in kv)
    return {"args": args, "env": env, "cwd": os.readlink(f"/proc/{pid}/cwd")}


def _record(status_file: Path, doc: dict) -> None:
    tmp = status_file.with_name(f".{status_file.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    os.replace(tmp, status_file)


def supervise(start_cmd: list[str], password_file: Path, port: int, temp_dir: str, status_file: Path) -> int:
    password = password_file.read_text().strip()
    rc = subprocess.call(start_cmd + [f"--redis-password={password}"], stdin=subprocess.DEVNULL)
    del password
    if rc != 0:
        print(f"[rayworks supervisor] `ray start --head` exited with code {rc}", flush=True)
        return rc
    deadline, pid = time.time() + 60, None
    while pid is None and time.time() < deadline and not _stopping:
        pid = find_gcs(port, temp_dir)
        time.sleep(0 if pid else 0.5)
    if pid is None:
        print("[rayworks supervisor] `ray start` succeeded but no gcs_server of this head was found", flush=True)
        return 0 if _stopping else 1
    gcs = snapshot(pid)
    doc = {"supervisor_pid": os.getpid(), "gcs_pid": pid, "restarts": []}
    _record(status_file, doc)
    print(f"[rayworks supervisor] watching GCS pid {pid} on port {port}", flush=True)
    child: subprocess.Popen | None = None
    while not _stopping:
        time.sleep(POLL_S)
        if _stopping:
            break
        if child is not None:
            child.poll()  # reap our own restarted GCS so a dead one does not linger as a zombie
        if _alive(pid):
            continue
        died = time.time()
        # The port is free once the dead process is gone; a fresh gcs_server then reloads the cluster from Redis.
        child = subprocess.Popen([a.decode() for a in gcs["args"]], env={k.decode(): v.decode() for k, v in gcs["env"].items()},
                                 cwd=gcs["cwd"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        print(f"[rayworks supervisor] GCS pid {pid} exited; started it again as pid {child.pid}", flush=True)
        doc["restarts"].append({"dead_pid": pid, "new_pid": child.pid, "noticed_at": died, "started_at": time.time()})
        doc["gcs_pid"] = pid = child.pid
        _record(status_file, doc)
        if len(doc["restarts"]) >= 3 and doc["restarts"][-1]["started_at"] - doc["restarts"][-3]["started_at"] < 30:
            time.sleep(5)  # a GCS that dies on start (Redis gone, port taken): do not spin
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Starts a local Ray head and restarts its GCS when it dies.")
    ap.add_argument("--password-file", type=Path, required=True, help="0600 file holding the Redis password")
    ap.add_argument("--gcs-port", type=int, required=True)
    ap.add_argument("--temp-dir", required=True)
    ap.add_argument("--status-file", type=Path, required=True)
    ap.add_argument("start_cmd", nargs=argparse.REMAINDER, help="-- ray start --head ... (without --block)")
    a = ap.parse_args(argv)
    cmd = a.start_cmd[1:] if a.start_cmd[:1] == ["--"] else a.start_cmd
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    return supervise(cmd, a.password_file, a.gcs_port, a.temp_dir, a.status_file)


if __name__ == "__main__":
    sys.exit(main())
