"""One spec's worker groups, three renders: the local fake-provider autoscaling config that `rayworks up`
gives the head, `ray up`'s available_node_types and KubeRay's workerGroupSpecs carry the same
min/max, resources and idle timeout."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from rayworks.cluster import local, multinode
from rayworks.cluster.kuberay import raycluster
from rayworks.cluster.rayup import render_ray_up
from rayworks.config.cluster import ClusterSpec, load_cluster_spec

REPO = Path(__file__).resolve().parents[2]
SPEC = REPO / "cluster" / "local-multinode.yaml"


def _variant(tmp_path: Path, provider: dict, **extra) -> ClusterSpec:
    d = yaml.safe_load(SPEC.read_text())
    d["provider"] = provider
    d["storage"] = {"uri": "s3://bucket/prefix"}
    d.pop("local")
    for node in [d["head"], *d["worker_groups"]]:
        node["instance_type"] = "m6i.xlarge"
    d.update(extra)
    p = tmp_path / f"{provider['type']}.yaml"
    p.write_text(yaml.safe_dump(d))
    return load_cluster_spec(p)


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mn")
    spec = load_cluster_spec(SPEC)
    aws = _variant(tmp, {"type": "aws", "region": "us-west-2"})
    k8s = _variant(tmp, {"type": "kubernetes", "namespace": "ml"}, dashboard={"host": "0.0.0.0", "port": 8265})
    return spec, multinode.autoscaling_config(spec), render_ray_up(aws), raycluster(k8s)["spec"]


def test_local_ray_up_and_kuberay_agree_on_every_group(renders):
    spec, loc, rup, kr = renders
    assert spec.worker_groups, "the shipped multi-node spec has worker groups"
    kgroups = {g["groupName"]: g for g in kr["workerGroupSpecs"]}
    for g in spec.worker_groups:
        lt, rt, kg = loc["available_node_types"][g.name], rup["available_node_types"][g.name], kgroups[g.name]
        assert (lt["min_workers"], lt["max_workers"]) == (rt["min_workers"], rt["max_workers"]) \
            == (kg["minReplicas"], kg["maxReplicas"]) == (g.min_workers, g.max_workers)
        custom = {k: v for k, v in rt["resources"].items() if k not in ("CPU", "GPU")}
        assert lt["resources"]["CPU"] == rt["resources"]["CPU"] == int(kg["template"]["spec"]["containers"][0][
            "resources"]["limits"]["cpu"]) == g.num_cpus
        assert {k: v for k, v in lt["resources"].items() if k not in ("CPU", "GPU", "object_store_memory")} == custom
        assert {k: float(v) for k, v in kg["resources"].items()} == {k: float(v) for k, v in custom.items()}
        assert lt["labels"] == rt["labels"] == kg["labels"]
    idle = spec.autoscaler.idle_timeout_minutes
    assert loc["idle_timeout_minutes"] == rup["idle_timeout_minutes"] == kr["autoscalerOptions"][
        "idleTimeoutSeconds"] / 60 == idle
    assert loc["max_workers"] == rup["max_workers"] == sum(g.max_workers for g in spec.worker_groups)


def test_both_launcher_configs_pass_rays_own_schema(renders):
    from ray.autoscaler._private.util import validate_config

    _, loc, rup, _ = renders
    validate_config(copy.deepcopy(rup))
    validate_config(copy.deepcopy(loc))
    assert loc["provider"]["type"] == "external"  # `fake_multinode` looks for a file the wheel lacks (STACK.md)
    assert loc["provider"]["gcs_address"].startswith("127.0.0.1:")


def test_a_spec_with_groups_starts_its_head_with_the_v2_autoscaler_and_one_without_does_not(tmp_path):
    spec = load_cluster_spec(SPEC)
    cmd, env = local.head_command(spec), local.head_env(spec)
    assert f"--autoscaling-config={multinode.config_path(local.STATE_DIR, spec)}" in cmd
    assert env["RAY_enable_autoscaler_v2"] == "1" and env["RAY_FAKE_CLUSTER"] == "1"
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"

    d = yaml.safe_load(SPEC.read_text())
    d["worker_groups"] = []
    p = tmp_path / "one.yaml"
    p.write_text(yaml.safe_dump(d))
    one = load_cluster_spec(p)
    assert not any(a.startswith("--autoscaling-config") for a in local.head_command(one))
    assert "RAY_FAKE_CLUSTER" not in local.head_env(one)


def test_status_table_lists_nodes_launches_and_demand():
    st = {"nodes": [
        {"group": "head", "state": "idle", "node_id": "f" * 51 + "00000", "instance_id": "x", "idle_s": 12.0,
         "resources": {"CPU": {"total": 1, "used": 0}, "memory": {"total": 9, "used": 0}}},
        {"group": "cpu", "state": "active", "node_id": "f" * 51 + "00001", "instance_id": "y", "idle_s": 0.0,
         "resources": {"CPU": {"total": 2, "used": 2}, "role:general": {"total": 1, "used": 0}}}],
        "pending_launches": [{"group": "cpu", "count": 2, "state": "PENDING"}],
        "pending_demand": [{"kind": "task/actor", "bundle": {"CPU": 2.0}, "count": 3}]}
    rows = multinode.format_status(st).splitlines()
    assert rows[1].split()[:2] == ["head", "idle"] and "CPU 0/1" in rows[1] and "memory" not in rows[1]
    assert rows[2].split()[:3] == ["cpu", "active", "f" * 7 + "00001"] and "CPU 2/2, role:general 0/1" in rows[2]
    assert rows[3].split()[:2] == ["cpu", "launch"] and "2 node(s) pending" in rows[3]
    assert rows[4] == "pending demand: 3 x {'CPU': 2.0} (task/actor)"


def test_head_fault_tolerance_renders_as_kuberay_gcs_options_and_ray_up_redis_settings(tmp_path):
    from ray.autoscaler._private.util import validate_config

    from rayworks.cluster.rayup import REDIS_PASSWORD_PATH
    from rayworks.errors import ConfigError

    head = {**yaml.safe_load(SPEC.read_text())["head"], "fault_tolerance": "redis",
            "redis_address": "redis.ml.svc:6379", "redis_password_secret": "gcs-redis"}
    k8s = _variant(tmp_path, {"type": "kubernetes", "namespace": "ml"}, dashboard={"host": "0.0.0.0"}, head=head)
    ft = raycluster(k8s)["spec"]["gcsFaultToleranceOptions"]
    assert ft == {"redisAddress": "redis.ml.svc:6379",
                  "redisPassword": {"valueFrom": {"secretKeyRef": {"name": "gcs-redis", "key": "password"}}}}

    aws = _variant(tmp_path, {"type": "aws", "region": "us-west-2"}, head={**head, "instance_type": "m6i.xlarge"})
    cfg = render_ray_up(aws)
    validate_config(copy.deepcopy(cfg))
    start = cfg["head_start_ray_commands"][-1]
    assert "RAY_REDIS_ADDRESS=redis.ml.svc:6379" in start
    assert start.endswith(f'--redis-password="$(cat {REDIS_PASSWORD_PATH})"')  # read on the node, not written here
    assert cfg["file_mounts"][REDIS_PASSWORD_PATH] == REDIS_PASSWORD_PATH
    assert not any("redis" in c for c in cfg["worker_start_ray_commands"])
    # Without it, no trace of Redis in either render.
    plain = _variant(tmp_path, {"type": "aws", "region": "us-west-2"})
    assert "redis" not in yaml.safe_dump(render_ray_up(plain)).lower()

    with pytest.raises(ConfigError, match="needs head.redis_address"):
        _variant(tmp_path, {"type": "aws", "region": "us-west-2"},
                 head={**head, "redis_address": None, "instance_type": "m6i.xlarge"})


# A local head with fault_tolerance: redis: tests/unit/test_local_redis.py.


def test_serve_on_a_local_multinode_cluster_runs_one_proxy_and_keeps_its_own_haproxy_files():
    """Every node of a local multi-node cluster is on this machine: a proxy per node would bind the same
    ports (and fake node ids repeat across clusters), so Serve's proxy runs on the head only."""
    from rayworks.serve.render import proxy_location

    spec = load_cluster_spec(SPEC)
    assert proxy_location(spec) == "HeadOnly"
    assert proxy_location(spec.model_copy(update={"worker_groups": []})) == "EveryNode"
    assert proxy_location(spec.model_copy(update={"provider": spec.provider.model_copy(update={"type": "kuberay"})})) \
        == "EveryNode"
    ha = spec.model_copy(update={"serve": spec.serve.model_copy(update={"ha_proxy": True})})
    env = local.head_env(ha)
    d = f"/tmp/haproxy-serve-{spec.local.gcs_port}"
    assert env["RAY_SERVE_HAPROXY_SOCKET_PATH"] == f"{d}/admin.sock"
    assert env["RAY_SERVE_HAPROXY_CONFIG_FILE_LOC"].startswith(d + "/")
    # Ray appends the 56-character node id: the socket path must stay under the 107-byte limit.
    assert len(env["RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH"]) + 57 <= 107
    assert "RAY_SERVE_HAPROXY_SOCKET_PATH" not in local.head_env(spec)  # no HAProxy, nothing to move
