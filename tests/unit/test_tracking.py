"""Tracking without a server: the spec's rules, the server command, params, and a down server's gap.

The gap tests use MLflow's real client against a loopback port nothing listens on: the
failure a stopped server gives, with no mock in between.
"""

from __future__ import annotations

import json
import socket

import pytest

from rayworks.config.cluster import ClusterSpec
from rayworks.errors import ConfigError


def spec(tmp_path, **tracking) -> ClusterSpec:
    d = {"name": "t", "head": {"num_cpus": 2, "memory_gb": 2}, "storage": {"uri": str(tmp_path)}}
    if tracking:
        d["tracking"] = tracking
    return ClusterSpec.model_validate(d)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_local_default_is_a_loopback_server_under_storage(tmp_path):
    from rayworks.tracking import experiment_name, server

    s = spec(tmp_path)
    assert s.tracking.client_uri() == "http://127.0.0.1:5000" and experiment_name(s) == "rayworks-t"
    cmd = server.server_command(s)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--app-name" not in cmd
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert cmd[cmd.index("--artifacts-destination") + 1] == f"{tmp_path}/mlflow/artifacts"


def test_off_loopback_needs_sealed_credentials_and_turns_basic_auth_on(tmp_path):
    from rayworks.tracking import server

    with pytest.raises(ValueError, match="MLFLOW_TRACKING_PASSWORD"):
        spec(tmp_path, host="0.0.0.0")
    with pytest.raises(ValueError, match="basic auth"):
        spec(tmp_path, uri="http://mlflow.example.com:5000")
    s = ClusterSpec.model_validate({
        "name": "t", "head": {"num_cpus": 2, "memory_gb": 2}, "storage": {"uri": str(tmp_path)},
        "tracking": {"host": "0.0.0.0"},
        "runtime_env": {"secret_env_vars": ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"]}})
    cmd = server.server_command(s)
    assert cmd[cmd.index("--app-name") + 1] == "basic-auth"
    assert s.tracking.client_uri() == f"http://127.0.0.1:{s.tracking.port}"
    # https off loopback carries its own transport security; the login is still the user's business.
    assert spec(tmp_path, uri="https://mlflow.example.com").tracking.client_uri() == "https://mlflow.example.com"


def test_bad_tracking_values_are_refused(tmp_path):
    for bad in ({"uri": "ftp://x"}, {"uri": "http://a b"}, {"host": "a;rm -rf"}, {"port": 0}, {"unknown": 1}):
        with pytest.raises(ValueError):
            spec(tmp_path, **bad)


def test_a_cloud_spec_without_uri_tracks_nothing_and_env_overrides(tmp_path, monkeypatch):
    from rayworks.tracking import tracking_uri

    s = spec(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri(spec(tmp_path, enabled=False)) is None
    assert s.tracking.client_uri("aws") is None and s.tracking.client_uri("kubernetes") is None
    assert tracking_uri(s) == "http://127.0.0.1:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1234/")
    assert tracking_uri(s) == "http://127.0.0.1:1234"


def test_server_up_refuses_external_and_down_touches_no_foreign_pid(tmp_path):
    import os

    from rayworks.tracking import server

    with pytest.raises(ConfigError, match="external"):
        server.up(spec(tmp_path, uri="https://mlflow.example.com"))
    s = spec(tmp_path)
    p = server.paths(s)
    os.makedirs(p["dir"], exist_ok=True)
    with open(p["pid"], "w") as fh:
        fh.write(f"{os.getpid()}\n")  # this pytest process: alive, but no MLflow server on that store
    assert server.read_pid(s) is None
    assert server.down(s, quiet=True) is False  # and we are still here


def test_params_flatten_like_the_config():
    from rayworks.tracking.runs import flatten

    flat = flatten({"config": {"run": {"num_steps": 12}, "betas": [0.9, 0.95], "x": None, "empty": {}}})
    assert flat == {"config.run.num_steps": "12", "config.betas": "[0.9, 0.95]", "config.x": "None",
                    "config.empty": "{}"}


def test_a_down_server_is_warned_once_counted_and_kept_across_processes(tmp_path, capsys):
    from rayworks.tracking.runs import Tracker, for_job

    s = spec(tmp_path, port=free_port(), retry_after_s=0)
    gap = str(tmp_path / "gap.json")
    t = for_job(s, "r", gap_uri=gap, who="train 'r'")  # the driver: no run could be opened
    assert t.run_id is None and t.failed == 1
    assert t.log_params({"a": 1}) is False
    out = capsys.readouterr().out
    assert out.count("WARNING") == 1 and "unreachable" in out
    # Rank 0 (another process) adds to the same gap; a restarted rank 0 continues the count.
    r0 = Tracker(s.tracking.client_uri(), "some-run", gap_uri=gap, retry_after_s=0)
    for step in (4, 8):
        assert r0.log_metrics(step, {"train_loss": 1.0}) is False
    r0b = Tracker(s.tracking.client_uri(), "some-run", gap_uri=gap, retry_after_s=0)
    assert r0b.log_metrics(12, {"train_loss": 1.0}) is False
    t.reload_gap()
    g = t.gap()
    # retry_after_s=0: every call tries the server again, so each one fails (1 open + 3 logs).
    assert g["skipped_logs"] == 4 and g["failed_calls"] == 4 and g["gap_steps"] == [4, 12], g
    saved = json.loads(open(gap).read())
    assert [saved[k] for k in ("skipped_logs", "failed_calls", "gap_steps")] == [4, 4, [4, 12]]
    assert capsys.readouterr().out.count("WARNING") == 2  # once per process (r0, r0b)


def test_while_down_nothing_touches_the_network(tmp_path):
    from rayworks.tracking.runs import Tracker

    t = Tracker(f"http://127.0.0.1:{free_port()}", "run", retry_after_s=3600)
    assert t.log_metrics(1, {"loss": 1.0}) is False and t.failed == 1
    for step in range(2, 50):  # skipped at once: the server is not asked again within retry_after_s
        assert t.log_metrics(step, {"loss": 1.0}) is False
    assert t.failed == 1 and t.skipped == 49 and t.gap_steps == [1, 49]


def test_models_uris_are_parsed_strictly():
    from rayworks.tracking import registry

    for bad in ("models:/x", "models:/x/y", "models:/x@", "runs:/abc/model", "models:/a/1/2"):
        with pytest.raises(ConfigError):
            registry.resolve("http://127.0.0.1:1", bad)
    with pytest.raises(ConfigError, match="tracking is off"):
        registry.resolve(None, "models:/x/1")


def test_lineage_names_the_run_and_version_at_the_train_link_and_its_export(tmp_path):
    from rayworks.client.lineage import _facts, _train_tracking

    tracking = {"run_id": "abc123", "model_version": {"name": "tiny", "version": 3, "uri": "models:/tiny/3"}}
    assert "mlflow_run=abc123 model_version=models:/tiny/3" in _facts({"kind": "train", "tracking": tracking})
    (tmp_path / "export").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "train", "tracking": tracking}))
    assert _train_tracking(str(tmp_path / "export" / "manifest.json")).split() == [
        "mlflow_run=abc123", "model_version=models:/tiny/3"]
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "prep"}))  # not a training run's output
    assert _train_tracking(str(tmp_path / "export" / "manifest.json")) == ""
