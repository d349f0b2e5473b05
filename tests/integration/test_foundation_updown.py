"""`rayworks up` / `down` on a second cluster: up creates its token, down stops only what up started."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
import yaml

from conftest import PORT_BASE, make_spec_dict

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SERVE_START = """
import sys, ray
from ray import serve
ray.init()
serve.start(http_options={"host": "127.0.0.1", "port": int(sys.argv[1])})
"""


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_down_leaves_other_clusters_alone(local_cluster, tmp_path):
    from rayworks.cluster import local
    from rayworks.config.cluster import load_cluster_spec

    from rayworks.cluster.auth import bearer_header

    # A home without a token (README: `rayworks up` creates ~/.ray/auth_token when none exists);
    # the developer's own ~/.ray/auth_token, which the session cluster uses, stays as it is.
    home = tmp_path / "home"
    home.mkdir()
    token = home / ".ray" / "auth_token"
    home_token = Path.home() / ".ray" / "auth_token"
    home_before = home_token.read_bytes() if home_token.is_file() else None
    spec_path = tmp_path / "second.yaml"
    spec_path.write_text(yaml.safe_dump(make_spec_dict(f"rwsecond{PORT_BASE}", tmp_path, base=PORT_BASE + 50)))
    rw = str(BIN / "rayworks")
    env0 = {**{k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")},
            "HOME": str(home), "RAYWORKS_HOME": str(local.STATE_DIR.parent)}  # cluster state where this process looks
    try:
        up = subprocess.run([rw, "up", str(spec_path)], env=env0, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stderr
        assert "is up" in up.stdout and f"http://127.0.0.1:{PORT_BASE + 51}" in up.stdout
        assert token.is_file() and len(token.read_text().strip()) >= 32 and token.stat().st_mode & 0o777 == 0o600
        assert token.read_text().strip() not in up.stdout + up.stderr  # never printed
        spec = load_cluster_spec(spec_path)
        spec.auth.token_path = str(token)  # this process's own home holds another token
        assert local.probe(spec) == "up"  # the Jobs API accepts the new token ...
        r = requests.get(f"{spec.dashboard_url}/api/jobs/", headers={"Authorization": "Bearer " + "0" * 32}, timeout=10)
        assert r.status_code in (401, 403)  # ... and only it
        assert bearer_header(spec) == {"Authorization": f"Bearer {token.read_text().strip()}"}
        # Start Serve there: with serve.ha_proxy its HAProxy runs in a process group of its own.
        env = {**env0, **local.auth_env(spec), "RAY_ADDRESS": f"127.0.0.1:{spec.local.gcs_port}"}
        start = subprocess.run([sys.executable, "-c", SERVE_START, str(spec.serve.port)], env=env,
                               capture_output=True, text=True, timeout=300)
        assert start.returncode == 0, start.stderr[-2000:]
        assert listening(spec.serve.port) and listening(spec.serve.haproxy_stats_port)
        sid = local.read_state(spec)["pgid"]
        assert any(b"haproxy" in Path(f"/proc/{p}/cmdline").read_bytes() for p in local.session_pids(sid))
        down = subprocess.run([rw, "down", str(spec_path)], env=env0, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0 and "stopped" in down.stdout
        assert local.probe(spec) == "down"
        # Nothing of it is left: no process of its session, no listener on its Serve or HAProxy ports.
        assert local.session_pids(sid) == []
        assert not listening(spec.serve.port) and not listening(spec.serve.haproxy_stats_port)
        # The session cluster is untouched.
        assert local.probe(local_cluster.spec) == "up"
    except BaseException:  # a failed assertion must not leave the second cluster running
        subprocess.run([rw, "down", str(spec_path)], env=env0, capture_output=True, timeout=120)
        raise
    again = subprocess.run([rw, "down", str(spec_path)], env=env0, capture_output=True, text=True, timeout=60)
    assert "nothing to stop" in again.stdout
    assert (home_token.read_bytes() if home_token.is_file() else None) == home_before
