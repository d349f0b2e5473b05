"""Cluster-side security checks that need no Ray: env vars, auth-off rules, stale state, token hand-out."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from rayworks.config.envcheck import env_var_problem, secret_name, secret_value
from rayworks.errors import ClusterError, ConfigError

RAYWORKS = str(Path(sys.executable).with_name("rayworks"))


# ---------------------------------------------------------------- env var names and values

@pytest.mark.parametrize("name", ["HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "DB_PASSWORD",
                                  "OPENAI_API_KEY", "GITHUB_TOKEN", "MY_SECRET", "GOOGLE_APPLICATION_CREDENTIALS",
                                  "WANDB_API_KEY", "hf_token", "SSH_PRIVATE_KEY", "SIGNING_KEY"])
def test_secret_looking_names_are_refused(name):
    assert secret_name(name)
    msg = env_var_problem(name, "1", "runtime_env.env_vars")
    assert msg and f"runtime_env.env_vars.{name}" in msg and "runtime_env.secret_env_vars" in msg


@pytest.mark.parametrize("name", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS",
                                  "TOKENIZERS_PARALLELISM", "RAY_USAGE_STATS_ENABLED", "KEYBOARD", "MONKEY"])
def test_ordinary_names_pass(name):
    assert not secret_name(name) and env_var_problem(name, "1", "x") is None


# ---------------------------------------------------------------- settings the spec owns

@pytest.mark.parametrize("name,field", [
    ("RAY_AUTH_MODE", "auth.mode"), ("RAY_AUTH_TOKEN_PATH", "auth.token_path"), ("RAY_AUTH_TOKEN", "auth.mode"),
    ("RAY_AUTH_SOMETHING_NEW", "auth.mode"), ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "provider.type"),
    ("RAY_SERVE_ENABLE_HA_PROXY", "serve.ha_proxy"), ("RAY_SERVE_HAPROXY_STATS_PORT", "serve.haproxy_stats_port"),
    ("RAY_SERVE_HAPROXY_METRICS_PORT", "serve.haproxy_metrics_port"),
    ("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "serve.replica_drain_s"),
    ("RAY_PROMETHEUS_HOST", "metrics.prometheus_url"), ("RAY_GRAFANA_HOST", "metrics.grafana_url"),
])
def test_settings_rayworks_owns_are_refused_naming_the_spec_field(name, field):
    msg = env_var_problem(name, "x", "runtime_env.env_vars")
    assert msg.startswith(f"runtime_env.env_vars.{name}: rayworks sets {name}") and field in msg


def test_spec_env_vars_cannot_switch_off_auth_or_loopback(tmp_path):
    # The reviewer's spec: it loaded, auth.mode read token, and the head started without auth.
    for env, needle in [({"RAY_AUTH_MODE": "disabled"}, "(auth.mode)"),
                        ({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}, "(provider.type")]:
        with pytest.raises(ConfigError) as exc:
            _spec(tmp_path, runtime_env={"env_vars": env})
        assert needle in str(exc.value) and "runtime_env.env_vars." in str(exc.value)
        assert "\n" not in str(exc.value)


def test_job_env_vars_cannot_switch_off_auth(tmp_path):
    from rayworks.config.jobs import load_job

    p = tmp_path / "job.yaml"
    p.write_text(yaml.safe_dump({"kind": "prep", "name": "p", "inputs": [{"path": "x.jsonl"}],
                                 "runtime_env": {"env_vars": {"RAY_AUTH_MODE": "disabled"}}}))
    with pytest.raises(ConfigError, match=r"runtime_env.env_vars.RAY_AUTH_MODE: .*\(auth.mode\)"):
        load_job(p)


def test_head_env_puts_what_the_spec_decides_last(tmp_path, monkeypatch):
    from rayworks.cluster import local

    spec = _spec(tmp_path)
    # A spec changed after loading (no validation then) and a shell that says otherwise.
    spec.runtime_env.env_vars.update({"RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1",
                                      "RAY_SERVE_ENABLE_HA_PROXY": "0", "MY_SETTING": "kept"})
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = local.head_env(spec)
    assert (env["RAY_AUTH_MODE"], env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]) == ("token", "0")
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and env["MY_SETTING"] == "kept"
    assert not hasattr(local, "LOOPBACK_ENV")  # one constant (auth.LOCAL_NODE_ENV), applied once


def test_kuberay_pods_cannot_switch_off_what_the_spec_decides():
    from rayworks.cluster import kuberay
    from rayworks.config.cluster import load_cluster_spec

    spec = load_cluster_spec(Path(__file__).resolve().parents[2] / "cluster" / "kubernetes.yaml")
    spec.runtime_env.env_vars["RAY_AUTH_MODE"] = "disabled"  # changed after loading: caught at render
    with pytest.raises(ConfigError, match=r"RAY_AUTH_MODE: .*\(auth.mode\)"):
        kuberay.raycluster(spec)


@pytest.mark.parametrize("value,why", [
    ("sk-proj-abcdefghijklmnop", "API key"), ("hf_abcdefghijklmnopqrstuvwxyz", "API key"),
    ("AKIAIOSFODNN7EXAMPLE", "API key"), ("ghp_0123456789abcdefghijABCDEFGHIJ", "API key"),
    ("glpat-0123456789abcdefghij", "API key"), ("-----BEGIN RSA PRIVATE KEY-----\nMII", "private key"),
    ("postgres://admin:pw@db.internal:5432/x", "password inside a URI"),
    ("https://user:s3cret@example.com/simple", "password inside a URI"),
    ("redis://:hunter2@127.0.0.1:6379/0", "password inside a URI"),
])
def test_secret_looking_values_are_refused(value, why):
    assert why in secret_value(value)
    msg = env_var_problem("DATABASE_URL", value, "runtime_env.env_vars")
    assert "runtime_env.env_vars.DATABASE_URL" in msg and "secret_env_vars" in msg
    assert value not in msg  # the error never echoes the secret


JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"


@pytest.mark.parametrize("value,why", [
    (JWT, "JSON Web Token"), (f"token={JWT}", "JSON Web Token"),
    ("Bearer 0123456789abcdefABCDEF", "HTTP credential"),
    ("Authorization: Bearer abcdefghijklmnopq", "HTTP credential"),
    ("Basic dXNlcjpodW50ZXIy", "HTTP credential"),  # user:hunter2
    ("https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0a1b2c", "pre-signed URL"),
    ("https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Signature=0a1b", "pre-signed URL"),
    ("https://a.blob.core.windows.net/c/b?sv=2022-11-02&sp=r&sig=AbC%3D", "pre-signed URL"),
    ("https://b.s3.amazonaws.com/k?AWSAccessKeyId=x&Expires=1&Signature=abc", "pre-signed URL"),
])
def test_tokens_headers_and_signed_urls_are_refused(value, why):
    assert why in secret_value(value)
    msg = env_var_problem("MODEL_URL", value, "runtime_env.env_vars")
    assert "runtime_env.env_vars.MODEL_URL" in msg and "secret_env_vars" in msg and value not in msg


@pytest.mark.parametrize("value", ["1", "postgres://db.internal:5432/x", "https://example.com/a:b@c",
                                   "s3://bucket/path", "sk", "hf_hub", "/home/user/.cache", "user@example.com",
                                   "Basic authentication", "Bearer tokens are checked", "https://example.com/?page=2",
                                   "https://example.com/?design=a", "eyJ"])
def test_ordinary_values_pass(value):
    assert secret_value(value) is None


def test_job_level_env_vars_get_the_same_check(tmp_path):
    from rayworks.config.jobs import load_job

    for env, needle in [({"HF_TOKEN": "x"}, "runtime_env.env_vars.HF_TOKEN looks like a secret"),
                        ({"DATABASE_URL": "postgres://admin:pw@h/x"}, "password inside a URI"),
                        ({"X": "AKIAIOSFODNN7EXAMPLE"}, "API key")]:
        p = tmp_path / "job.yaml"
        p.write_text(yaml.safe_dump({"kind": "prep", "name": "p", "inputs": [{"path": "x.jsonl"}],
                                     "runtime_env": {"env_vars": env}}))
        with pytest.raises(ConfigError) as exc:
            load_job(p)
        assert needle in str(exc.value) and "secret_env_vars" in str(exc.value) and "\n" not in str(exc.value)


# ---------------------------------------------------------------- local head: loopback, auth off

def _spec(tmp_path, **changes):
    from rayworks.config.cluster import load_cluster_spec

    d = {"name": "t", "head": {"num_cpus": 2, "memory_gb": 4}, "storage": {"uri": str(tmp_path)},
         "local": {"temp_dir": str(tmp_path / "ray")}, **changes}
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump(d))
    return load_cluster_spec(p)


def test_local_head_binds_the_node_to_loopback(tmp_path):
    from rayworks.cluster import local

    env = local.head_env(_spec(tmp_path))
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"  # Ray's one-machine mode: node address 127.0.0.1


def test_auth_disabled_only_where_every_listener_is_loopback(tmp_path):
    ok = _spec(tmp_path, auth={"mode": "disabled"}, serve={"ha_proxy": False})
    assert ok.auth.mode == "disabled"
    for changes, needle in [({"serve": {"ha_proxy": False, "host": "0.0.0.0"}}, "serve.host='0.0.0.0'"),
                            ({"serve": {"ha_proxy": True}}, "serve.ha_proxy"),
                            ({"serve": {"ha_proxy": False}, "dashboard": {"host": "0.0.0.0"}}, "dashboard.host")]:
        with pytest.raises(ConfigError, match="auth.mode=disabled") as exc:
            _spec(tmp_path, auth={"mode": "disabled"}, **changes)
        assert needle in str(exc.value)


# ---------------------------------------------------------------- `down` with a stale state file

def test_down_never_signals_a_process_that_is_not_this_clusters_ray(tmp_path, monkeypatch):
    from rayworks.cluster import local

    monkeypatch.setattr(local, "STATE_DIR", tmp_path / "state")
    spec = _spec(tmp_path)
    # An unrelated process group of ours, named by a stale state file (e.g. the pid was reused).
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        local.STATE_DIR.mkdir()
        local.state_file(spec).write_text(json.dumps({"pgid": other.pid, "temp_dir": spec.local.temp_dir}))
        assert local.is_our_ray(local.read_state(spec), spec) is False
        assert local.down(spec, timeout_s=2) is False
        assert other.poll() is None  # still running: nothing was signalled
        assert not local.state_file(spec).exists()  # the stale file is gone
    finally:
        other.kill()
        other.wait()


def test_is_our_ray_recognises_the_head_command(tmp_path):
    from rayworks.cluster import local

    spec = _spec(tmp_path)
    # A stand-in with the head's argument shape (`... start --head ... --temp-dir=<ours>`); a real head
    # is recognised the same way in tests/integration/test_foundation_updown.py.
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "start", "--head",
                             f"--temp-dir={spec.local.temp_dir}"], start_new_session=True)
    try:
        assert local.is_our_ray({"pgid": fake.pid, "temp_dir": spec.local.temp_dir}, spec)
        assert not local.is_our_ray({"pgid": fake.pid, "temp_dir": "/elsewhere"}, spec)
    finally:
        fake.kill()
        fake.wait()


# ---------------------------------------------------------------- the token goes only to Ray

class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).seen.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"hello, not ray")

    def log_message(self, *a):
        pass


def test_token_is_never_sent_to_a_listener_that_is_not_ray(tmp_path, monkeypatch):
    from rayworks.cluster import auth, local

    srv = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        tok = tmp_path / "tok"
        tok.write_text("canary-token-0123456789")
        monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
        spec = _spec(tmp_path, dashboard={"port": srv.server_port}, auth={"token_path": str(tok)})
        assert auth.listener_uids(srv.server_port) == {os.getuid()}
        with pytest.raises(ClusterError, match="does not answer like a Ray dashboard"):
            auth.bearer_header(spec)
        assert local.probe(spec) == "foreign"
        with pytest.raises(ClusterError, match="not this user's Ray"):
            local.up(spec)
        assert _Recorder.seen and not any("canary" in json.dumps(h) for h in _Recorder.seen)
    finally:
        srv.shutdown()
        srv.server_close()
    assert local.probe(spec) == "down"


def _serve(handler) -> http.server.HTTPServer:
    srv = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_job_client_checks_any_address_before_sending_the_token(tmp_path, monkeypatch):
    from rayworks.client import submit

    _Recorder.seen = []
    srv = _serve(_Recorder)
    monkeypatch.setenv("RAY_AUTH_TOKEN", "canary-token-0123456789")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # client() sets these in the process: restored after
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    url = f"http://127.0.0.1:{srv.server_port}"
    try:
        # `rayworks jobs --address URL` (no spec), and a spec whose own dashboard is elsewhere.
        for spec in (None, _spec(tmp_path)):
            with pytest.raises(ClusterError, match="does not answer like a Ray dashboard"):
                submit.client(spec, url)
    finally:
        srv.shutdown()
        srv.server_close()
    assert _Recorder.seen and not any("canary" in json.dumps(h) for h in _Recorder.seen)


class _RayShaped(http.server.BaseHTTPRequestHandler):
    """Answers the two routes rayworks reads the way Ray's dashboard does; counts the listener checks."""

    checks = 0

    def do_GET(self):  # noqa: N802
        if self.path == "/api/authentication_mode":
            type(self).checks += 1
            body = {"authentication_mode": "token"}
        else:
            body = {"data": []}
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *a):
        pass


def test_listener_check_runs_once_per_url_and_probe_always_checks(tmp_path, monkeypatch):
    from rayworks.cluster import auth, local

    tok = tmp_path / "tok"
    tok.write_text("t" * 32)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    _RayShaped.checks = 0
    srv = _serve(_RayShaped)
    spec = _spec(tmp_path, dashboard={"port": srv.server_port}, auth={"token_path": str(tok)})
    try:
        for _ in range(3):
            assert auth.bearer_header(spec) == {"Authorization": f"Bearer {'t' * 32}"}
        assert _RayShaped.checks == 1  # one HTTP round trip and /proc scan per URL and process
        assert local.probe(spec) == "up" and _RayShaped.checks == 2  # probe never trusts the cache
    finally:
        srv.shutdown()
        srv.server_close()
    assert local.probe(spec) == "down"  # ... and a failed check empties it:
    with pytest.raises(auth.DashboardDown):
        auth.bearer_header(spec)


def test_down_and_foreign_are_told_apart_by_type_not_text(tmp_path, monkeypatch):
    from rayworks.cluster import auth

    _Recorder.seen = []
    srv = _serve(_Recorder)
    try:
        with pytest.raises(ClusterError) as exc:
            auth.verify_url(f"http://127.0.0.1:{srv.server_port}")
        assert not isinstance(exc.value, auth.DashboardDown)
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(auth.DashboardDown):  # the port is free now
        auth.verify_url(f"http://127.0.0.1:{srv.server_port}")
    monkeypatch.setattr(auth, "listener_uids", lambda port: None)  # no /proc (not Linux): refused connect
    with pytest.raises(auth.DashboardDown):
        auth.verify_url(f"http://127.0.0.1:{srv.server_port}")


# ---------------------------------------------------------------- keygen, Prometheus config

def test_keygen_force_does_not_follow_a_symlink(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("keep me\n")
    link = tmp_path / "keys"
    link.symlink_to(target)
    proc = subprocess.run([RAYWORKS, "serve", "keygen", "--file", str(link), "--force"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and target.read_text() == "keep me\n"


def test_prometheus_config_is_data_not_text():
    from rayworks.client.monitor import render_prometheus_config

    path = "/tmp/x'\n- job_name: evil\n  static_configs: [{targets: ['h:1']}]\"#"
    doc = yaml.safe_load(render_prometheus_config(path, loopback=True))
    assert [j["job_name"] for j in doc["scrape_configs"]] == ["ray"]
    assert doc["scrape_configs"][0]["file_sd_configs"][0]["files"] == [path]


def test_ensure_token_creates_a_private_token_at_a_path_that_does_not_exist_yet(tmp_path, monkeypatch):
    """Ray's own generator refuses a missing RAY_AUTH_TOKEN_PATH; ensure_token still makes the spec's token."""
    from rayworks.cluster.auth import ensure_token
    from rayworks.config.cluster import ClusterSpec

    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the developer's ~/.ray stays untouched
    target = tmp_path / "secrets" / "cluster.token"
    spec = ClusterSpec.model_validate({"name": "tok", "provider": {"type": "local"},
                                       "head": {"num_cpus": 2, "memory_gb": 4}, "storage": {"uri": str(tmp_path / "store")},
                                       "auth": {"mode": "token", "token_path": str(target)}})
    assert ensure_token(spec) == target
    token = target.read_text().strip()
    assert len(token) >= 32 and oct(target.stat().st_mode & 0o777) == "0o600"
    assert not (tmp_path / "home" / ".ray" / "auth_token").exists()
    assert ensure_token(spec) == target and target.read_text().strip() == token  # kept, not regenerated
