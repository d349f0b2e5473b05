"""head.fault_tolerance: redis on a local head: the spec, the real redis-server rayworks starts and
stops, and the head's command, environment and autoscaling config, none of which holds the password.

The GCS kill itself is tests/integration/test_multinode_ha.py."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rayworks.cluster import local, multinode, redis
from rayworks.config.cluster import load_cluster_spec
from rayworks.errors import ClusterError, ConfigError
from tests.multinode_fixture import multinode_spec_dict

PORT_BASE = int(os.environ.get("RAYWORKS_TEST_PORT_BASE", "27000"))
REDIS_PORT = PORT_BASE + 131  # outside every session cluster's ports (multinode_fixture: +120..+129)


def _spec(tmp_path: Path, **local_opts):
    d = multinode_spec_dict(tmp_path / "art", fault_tolerance="redis")
    d["local"].update(local_opts)
    p = tmp_path / "ft.yaml"
    p.write_text(yaml.safe_dump(d))
    return load_cluster_spec(p)


def test_a_local_head_accepts_redis_and_validates_its_port(tmp_path):
    spec = _spec(tmp_path, redis_port=REDIS_PORT)
    assert redis.enabled(spec) and redis.address(spec) == f"127.0.0.1:{REDIS_PORT}"
    assert load_cluster_spec(Path(__file__).resolve().parents[2] / "cluster" / "local.yaml").local.redis_port == 6380

    gcs = spec.local.gcs_port
    with pytest.raises(ConfigError, match=f"local.redis_port={gcs} is also local.gcs_port"):
        _spec(tmp_path, redis_port=gcs)
    with pytest.raises(ConfigError, match="is also dashboard.port"):
        _spec(tmp_path, redis_port=spec.dashboard.port)
    with pytest.raises(ConfigError, match="redis_port"):
        _spec(tmp_path, redis_port=70000)
    d = multinode_spec_dict(tmp_path / "art", fault_tolerance="redis")
    d["head"]["redis_address"] = "10.0.0.5:6379"
    (tmp_path / "ext.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match="rayworks starts its own redis-server on 127.0.0.1:local.redis_port"):
        load_cluster_spec(tmp_path / "ext.yaml")


def _listen_addrs(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* writes them) with a listening socket on ``port``."""
    out = set()
    for t in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(t).read_text().splitlines()[1:]:
            f = line.split()
            ip, _, hexport = f[1].partition(":")
            if f[3] == "0A" and int(hexport, 16) == port:
                out.add(ip)
    return out


def test_redis_starts_on_loopback_with_a_private_password_and_stops(tmp_path):
    spec = _spec(tmp_path, redis_port=REDIS_PORT)
    state = tmp_path / "state"
    st = redis.start(state, spec)
    p = redis.paths(state, spec)
    try:
        assert not st["reused"] and redis.running_pid(state, spec) == st["pid"]
        password = redis.read_password(state, spec)
        assert len(password) >= 40
        assert stat.S_IMODE(p["dir"].stat().st_mode) == 0o700
        assert {stat.S_IMODE(p[k].stat().st_mode) for k in ("password", "conf")} == {0o600}
        # Only on loopback, and only with the password.
        assert _listen_addrs(REDIS_PORT) == {"0100007F"}
        assert "+PONG" in redis._ping(REDIS_PORT, password)
        assert "WRONGPASS" in redis._ping(REDIS_PORT, password[::-1])
        # The password is in no command line or environment of the server.
        proc = Path(f"/proc/{st['pid']}")
        assert password.encode() not in (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        assert password.encode() not in p["log"].read_bytes()
        assert redis.start(state, spec)["reused"]  # a second `up` finds ours and keeps it
    finally:
        assert redis.stop(state, spec)
    assert not redis._ours(st["pid"], spec)  # gone (command line checked, as `stop` does)
    assert not _listen_addrs(REDIS_PORT)
    assert not p["password"].exists() and not p["conf"].exists() and p["log"].is_file()


def test_stop_signals_only_our_redis_and_start_refuses_a_taken_port(tmp_path):
    spec = _spec(tmp_path, redis_port=REDIS_PORT)
    state = tmp_path / "state"
    p = redis.paths(state, spec)
    p["dir"].mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        p["pid"].write_text(f"{other.pid}\n")  # a stale pid file now naming someone else's process
        assert redis.stop(state, spec) is False
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
    with socket.socket() as s:
        s.bind(("127.0.0.1", REDIS_PORT))
        s.listen()
        with pytest.raises(ClusterError, match=f"already listens on 127.0.0.1:{REDIS_PORT}"):
            redis.start(state, spec)
    assert not p["password"].exists()


def test_head_command_env_and_autoscaling_config_carry_no_password(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "STATE_DIR", tmp_path / "state")
    spec = _spec(tmp_path, redis_port=REDIS_PORT)
    redis.start(local.STATE_DIR, spec)
    try:
        password = redis.read_password(local.STATE_DIR, spec)
        cmd = local.supervised_command(spec)
        env = local.head_env(spec)
        assert env["RAY_REDIS_ADDRESS"] == f"127.0.0.1:{REDIS_PORT}"
        assert cmd[1:3] == ["-m", "rayworks.cluster.supervisor"] and "--block" not in cmd
        ray_start = cmd[cmd.index("--") + 1:]
        assert ray_start == [a for a in local.head_command(spec) if a != "--block"]
        assert f"--password-file={redis.paths(local.STATE_DIR, spec)['password']}" in cmd
        texts = [" ".join(cmd), json.dumps(env), json.dumps(multinode.autoscaling_config(spec))]
        assert not [t for t in texts if password in t or "redis-password" in t]
    finally:
        redis.stop(local.STATE_DIR, spec)


def test_status_line_reports_the_supervisors_gcs_restarts(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "STATE_DIR", tmp_path / "state")
    spec = _spec(tmp_path)
    assert "has written no status" in local.head_ft_summary(spec)
    local.STATE_DIR.mkdir()
    doc = {"supervisor_pid": 10, "gcs_pid": 11, "restarts": []}
    local.supervisor_status_file(spec).write_text(json.dumps(doc))
    assert local.head_ft_summary(spec).endswith("GCS pid 11, supervisor pid 10, GCS restarts: 0")
    doc["restarts"] = [{"dead_pid": 11, "new_pid": 12, "noticed_at": 1.0, "started_at": 2.0},
                       {"dead_pid": 12, "new_pid": 13, "noticed_at": 3.0, "started_at": 4.0}]
    doc["gcs_pid"] = 13
    local.supervisor_status_file(spec).write_text(json.dumps(doc))
    line = local.head_ft_summary(spec)
    assert "GCS pid 13" in line and "GCS restarts: 2, last at " in line and line.endswith("(pid 12 -> 13)")
    (tmp_path / "noft.yaml").write_text(yaml.safe_dump(multinode_spec_dict(tmp_path / "s2")))
    assert local.head_ft_summary(load_cluster_spec(tmp_path / "noft.yaml")) is None
