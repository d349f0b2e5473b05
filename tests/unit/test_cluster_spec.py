"""Cluster spec validation: the shipped specs load; each kind of bad spec gives one clear ConfigError.

Fast (no Ray): loads YAML files written to tmp_path, and runs `rayworks cluster validate`
in-process and once as the real console script (exit code 2, one line on stderr).
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rayworks.client.cli import main as cli_main
from rayworks.config.cluster import load_cluster_spec
from rayworks.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

GOOD = {
    "name": "t-aws",
    "provider": {"type": "aws", "region": "us-west-2"},
    "head": {"instance_type": "m6i.2xlarge", "num_cpus": 8, "memory_gb": 32},
    "worker_groups": [
        {"name": "data", "role": "data", "instance_type": "m6i.8xlarge", "num_cpus": 32, "memory_gb": 128,
         "min_workers": 0, "max_workers": 4},
        {"name": "train", "role": "train", "instance_type": "p4d.24xlarge", "num_cpus": 96, "num_gpus": 8,
         "accelerator_type": "A100", "memory_gb": 1152, "min_workers": 0, "max_workers": 2},
    ],
    "storage": {"uri": "s3://bucket/prefix"},
}


def write(tmp_path: Path, data: dict | str, name: str = "spec.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return p


def mutate(**changes) -> dict:
    """GOOD with dotted-path changes; a value of None deletes the key."""
    d = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        node = d
        parts = dotted.split("__")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        last = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
        if value is None:
            del node[last]
        else:
            node[last] = value
    return d


@pytest.mark.parametrize("path", sorted((REPO / "cluster").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_are_valid(path, capsys):
    spec = load_cluster_spec(path)
    assert spec.auth.mode == "token"
    assert cli_main(["cluster", "validate", str(path)]) == 0
    assert f"valid {spec.provider.type} spec" in capsys.readouterr().out


def test_validate_says_where_runs_are_tracked(tmp_path, capsys):
    """A cloud spec without tracking.uri logs nowhere: validate says so instead of staying silent."""
    aws = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    cases = [({"enabled": True}, "tracking: off: rayworks runs an MLflow server only beside a local cluster"),
             ({"enabled": False}, "tracking: off (tracking.enabled: false)"),
             ({"uri": "https://mlflow.internal"}, "tracking: MLflow at https://mlflow.internal")]
    for tracking, line in cases:
        path = tmp_path / "aws.yaml"
        path.write_text(yaml.safe_dump({**aws, "tracking": tracking}, sort_keys=False))
        assert cli_main(["cluster", "validate", str(path)]) == 0
        assert line in capsys.readouterr().out, tracking


@pytest.mark.parametrize("name", ["aws", "gcp"])
def test_cloud_specs_pin_the_stack_and_have_cpu_and_gpu_groups(name):
    spec = load_cluster_spec(REPO / "cluster" / f"{name}.yaml")
    for pin in ["ray[default,train,serve,data]==2.60.0", "torch==2.13.0", "deepspeed==0.19.8", "vllm==0.32.0"]:
        assert pin in spec.runtime_env.pip
    assert any(p.startswith("pyarrow==") for p in spec.runtime_env.pip)
    roles = {g.role: g for g in spec.worker_groups}
    assert roles["data"].num_gpus == 0
    assert roles["train"].num_gpus > 0 and roles["train"].accelerator_type
    assert roles["serve"].num_gpus > 0 and roles["serve"].accelerator_type


def test_kubernetes_spec_has_namespace_and_secret_name():
    spec = load_cluster_spec(REPO / "cluster" / "kubernetes.yaml")
    assert spec.provider.namespace and spec.auth.k8s_secret_name
    assert {g.role for g in spec.worker_groups} == {"data", "train", "serve"}


BAD = [
    # (id, spec (dict or raw text), substrings the one-line message must contain)
    ("malformed-yaml", "name: t\nhead:\n  num_cpus: [1, 2\nstorage: {uri: /x}\n",
     ["spec.yaml:", "malformed YAML"]),
    ("unknown-key", mutate(head__gpus=2), ["spec.yaml:9", "head.gpus", "unknown key"]),
    ("unknown-top-key", mutate(workers=[]), ["workers", "unknown key"]),
    ("wrong-type", mutate(head__num_cpus="lots"), ["head.num_cpus", "'lots'"]),
    ("wrong-type-list", mutate(worker_groups={"name": "x"}), ["worker_groups", "list"]),
    ("min-gt-max", mutate(worker_groups__0__min_workers=5),
     ["min_workers (5) > max_workers (4)", "'data'", "lower min_workers"]),
    ("accelerator-on-cpu-group", mutate(worker_groups__0__accelerator_type="H100"),
     ["worker_groups.0", "accelerator_type='H100'", "num_gpus: 0"]),
    ("negative-gpus", mutate(worker_groups__1__num_gpus=-1), ["worker_groups.1.num_gpus", "-1"]),
    ("missing-region", mutate(provider={"type": "aws"}), ["provider", "needs provider.region"]),
    ("gcp-missing-project", mutate(provider={"type": "gcp", "region": "us-central1",
                                             "availability_zone": "us-central1-a"}),
     ["provider.type=gcp needs provider.project_id"]),
    ("k8s-missing-namespace", mutate(provider={"type": "kubernetes"}), ["needs provider.namespace"]),
    ("unknown-provider", mutate(provider={"type": "azure"}), ["provider.type", "'azure'"]),
    ("missing-instance-type", mutate(worker_groups__1__instance_type=None),
     ["worker_groups.train.instance_type is required for provider.type=aws"]),
    ("missing-head", mutate(head=None), ["head", "required"]),
    ("duplicate-groups", mutate(worker_groups__1__name="data"), ["unique", "data"]),
    ("bad-group-name", mutate(worker_groups__0__name="Data_Group"), ["worker_groups.0.name", "Data_Group"]),
    ("bad-role", mutate(worker_groups__0__role="etl"), ["worker_groups.0.role", "'etl'"]),
    ("secret-env-var", mutate(runtime_env={"env_vars": {"HF_TOKEN": "hf_abc"}}),
     ["env_vars.HF_TOKEN looks like a secret", "secret_env_vars"]),
    ("secret-env-var-password", mutate(runtime_env={"env_vars": {"DB_PASSWORD": "x"}}), ["DB_PASSWORD"]),
    ("relative-storage", mutate(storage={"uri": "artifacts"}), ["storage.uri='artifacts'", "s3://"]),
    ("open-jobs-api", mutate(auth={"mode": "disabled"}, dashboard={"host": "0.0.0.0"}),
     ["auth.mode=disabled on provider.type=aws", "remote code execution", "keep auth.mode=token"]),
    ("auth-off-local-open-dashboard", mutate(provider={"type": "local"}, worker_groups=[], storage={"uri": "/tmp/x"},
                                            auth={"mode": "disabled"}, dashboard={"host": "0.0.0.0"}),
     ["auth.mode=disabled", "dashboard.host='0.0.0.0'", "remote code execution"]),
    ("auth-off-local-haproxy", mutate(provider={"type": "local"}, worker_groups=[], storage={"uri": "/tmp/x"},
                                      auth={"mode": "disabled"}, serve={"ha_proxy": True}),
     ["auth.mode=disabled", "serve.ha_proxy", "all interfaces"]),
    ("shell-in-host", mutate(dashboard={"host": "127.0.0.1; curl x | sh; echo"}),
     ["dashboard.host", "not an IP address or host name"]),
    ("shell-in-serve-host", mutate(serve={"host": "$(id)"}), ["serve.host", "not an IP address or host name"]),
    ("secret-value-uri", mutate(runtime_env={"env_vars": {"DATABASE_URL": "postgres://admin:pw@db:5432/x"}}),
     ["env_vars.DATABASE_URL", "password inside a URI", "secret_env_vars"]),
    ("secret-value-key", mutate(runtime_env={"env_vars": {"OPENAI": "sk-abcdefghijklmnop"}}),
     ["env_vars.OPENAI", "API key", "secret_env_vars"]),
    ("quote-in-region", mutate(provider={"type": "aws", "region": "us-west-2'"}), ["provider.region"]),
    ("local-workers-with-gpus", mutate(provider={"type": "local"}, storage={"uri": "/tmp/x"}),
     ["worker_groups.train.num_gpus=8 on provider.type=local", "set num_gpus: 0"]),
    ("bad-port", mutate(dashboard={"port": 70000}), ["dashboard.port", "70000"]),
]


@pytest.mark.parametrize("data,needles", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_spec_gives_one_clear_line(tmp_path, data, needles):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as exc:
        load_cluster_spec(path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert exc.value.exit_code == 2
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "name: t\nhead:\n  num_cpus: 2\n  memory_gb: [1\nstorage: {uri: /x}\n")
    with pytest.raises(ConfigError, match=r"spec\.yaml:\d+: malformed YAML"):
        load_cluster_spec(path)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such file"):
        load_cluster_spec("/nonexistent/spec.yaml")


@pytest.mark.parametrize("changes,needle", [
    ({"provider": {"type": "gcp", "region": "r", "availability_zone": "r-a", "project_id": "p"},
      "worker_groups__1__instance_type": "n1-standard-16", "worker_groups__1__accelerator_type": "Z9"},
     "accelerator_type='Z9' has no known GCE accelerator name"),
    ({"provider": {"type": "gcp", "region": "r", "availability_zone": "r-a", "project_id": "p"},
      "worker_groups__1__instance_type": "n1-standard-16", "worker_groups__1__accelerator_type": None},
     "n1-standard-16 with num_gpus: 8 needs accelerator_type"),
    ({"worker_groups__0__resources": {"ssd": 0.5}}, "worker_groups.data.resources.ssd=0.5"),
    ({"provider": {"type": "kubernetes", "namespace": "ns"}}, "dashboard.host='127.0.0.1'"),
])
def test_validate_catches_what_only_rendering_can(tmp_path, capsys, changes, needle):
    path = write(tmp_path, mutate(**changes))
    assert cli_main(["cluster", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert needle in err


def test_validate_cli_exits_2_with_one_line(tmp_path):
    """The real console script: exit code 2 and a single line naming the field and the fix."""
    path = write(tmp_path, mutate(worker_groups__0__min_workers=9))
    exe = Path(sys.executable).with_name("rayworks")
    proc = subprocess.run([str(exe), "cluster", "validate", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "min_workers (9) > max_workers (4)" in lines[0] and "spec.yaml" in lines[0]


def test_local_head_runs_serve_ha_proxy_on_the_specs_ports():
    """Two local clusters on one machine (the demo beside CI) must not fight over HAProxy's ports."""
    from rayworks.cluster.local import head_env

    base = load_cluster_spec(REPO / "cluster" / "local.yaml")
    other = base.model_copy(update={
        "serve": base.serve.model_copy(update={"haproxy_stats_port": 18404, "haproxy_metrics_port": 19101,
                                               "fallback_proxy_port": 18500})})
    a, b = head_env(base), head_env(other)
    assert a["RAY_SERVE_ENABLE_HA_PROXY"] == b["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert (a["RAY_SERVE_HAPROXY_STATS_PORT"], a["RAY_SERVE_HAPROXY_METRICS_PORT"]) == ("8404", "9101")
    assert (b["RAY_SERVE_HAPROXY_STATS_PORT"], b["RAY_SERVE_HAPROXY_METRICS_PORT"]) == ("18404", "19101")
    # Serve's fallback proxy on the head (beside HAProxy) too: Ray's default is 8500 for every cluster.
    assert (a["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"], b["RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"]) == ("8500", "18500")
    # A replaced engine replica goes after the short drain, not Ray's 30 s sized for external balancers.
    assert a["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "5"
    off = base.model_copy(update={"serve": base.serve.model_copy(update={"ha_proxy": False})})
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in {k for k in head_env(off) if k not in os.environ}
