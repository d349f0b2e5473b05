"""The YAML loader, overrides and job-kind dispatch (no Ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rayworks.config.base import config_hash, load_yaml_model, set_override
from rayworks.config.cluster import ClusterSpec, load_cluster_spec
from rayworks.config.jobs import load_job
from rayworks.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("name: x\nhead:\n  num_cpus: [1,\n  memory_gb: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: malformed YAML"):
        load_yaml_model(ClusterSpec, p)


def test_validation_error_names_field_line_and_value(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("name: ok\nhead:\n  num_cpus: many\n  memory_gb: 2\nstorage:\n  uri: /x\n")
    with pytest.raises(ConfigError) as e:
        load_yaml_model(ClusterSpec, p)
    msg = str(e.value)
    assert "spec.yaml:3" in msg and "head.num_cpus" in msg and "'many'" in msg


def test_unknown_key_is_rejected(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("name: ok\nhead: {num_cpus: 2, memory_gb: 2}\nstorage: {uri: /x}\nheadd: 1\n")
    with pytest.raises(ConfigError, match="headd: unknown key"):
        load_yaml_model(ClusterSpec, p)


def test_overrides_parse_yaml_values():
    d = {"a": {"b": 1}}
    set_override(d, "a.b=3")
    set_override(d, "a.c.d=[1, 2]")
    set_override(d, "e=true")
    assert d == {"a": {"b": 3, "c": {"d": [1, 2]}}, "e": True}
    with pytest.raises(ConfigError, match="KEY.SUB=VALUE"):
        set_override(d, "nokey")


def test_local_spec_resolves_storage_relative_to_file():
    spec = load_cluster_spec(REPO / "cluster" / "local.yaml")
    assert spec.storage.uri == str(REPO / "artifacts")
    assert spec.auth.mode == "token" and spec.dashboard.host == "127.0.0.1"
    # Pitfall 3: more logical CPUs than cores so LLM replica + ingress + driver all schedule.
    assert spec.head.num_cpus >= 4


def test_config_hash_is_stable_and_sensitive():
    assert config_hash({"a": 1, "b": 2}) == config_hash({"b": 2, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_unknown_kind(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("kind: bake\nname: x\n")
    with pytest.raises(ConfigError, match="'bake' is not a job kind"):
        load_job(p)


def test_cli_exits_2_with_one_line(tmp_path):
    p = tmp_path / "job.yaml"
    p.write_text("kind: [unclosed\n")
    proc = subprocess.run([str(Path(sys.executable).with_name("rayworks")), "validate", str(p)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "malformed YAML" in lines[0], proc.stderr


def test_secret_env_vars_come_from_the_shell_not_the_file(tmp_path, monkeypatch):
    from rayworks.config.jobs import JobBase
    from rayworks.submit import runtime_env

    spec = ClusterSpec.model_validate({"name": "t", "head": {"num_cpus": 2, "memory_gb": 2}, "storage": {"uri": "/x"},
                                       "runtime_env": {"secret_env_vars": ["RW_TEST_SECRET"]}})
    job = JobBase(kind="prep", name="x")
    with pytest.raises(ConfigError, match="RW_TEST_SECRET"):
        runtime_env(job, spec, tmp_path)
    monkeypatch.setenv("RW_TEST_SECRET", "s3cr3t")
    env = runtime_env(job, spec, tmp_path)
    assert env["env_vars"]["RW_TEST_SECRET"] == "s3cr3t"
    with pytest.raises(Exception, match="looks like a secret"):
        ClusterSpec.model_validate({"name": "t", "head": {"num_cpus": 2, "memory_gb": 2}, "storage": {"uri": "/x"},
                                    "runtime_env": {"env_vars": {"HF_TOKEN": "abc"}}})
