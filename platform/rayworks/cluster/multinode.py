"""Local multi-node mode: worker groups on this machine, launched and removed by Ray's own autoscaler.

A local spec with ``worker_groups`` starts its head with an autoscaling config whose node
provider is Ray's fake multi-node provider (``FakeMultiNodeProvider``): every node it launches
is a real raylet on this machine, started by the head's autoscaler monitor. Ray decides when to
add or remove nodes (autoscaler v2: pending demand -> launch, idle past the timeout -> terminate);
rayworks only writes the config and the head's environment (see STACK.md, "Several Ray nodes on
one machine": v1 never marks the fake nodes active, and ``type: fake_multinode`` looks for a file
the wheel does not ship, hence ``type: external``).

The worker raylets are children of the head's monitor, so they live in the head's session:
``rayworks down`` (which stops that session) stops them too and nothing else.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from rayworks.cluster.rayup import LABEL_GROUP, LABEL_ROLE, node_resources
from rayworks.config.cluster import ClusterSpec

PROVIDER = "rayworks.cluster.nodeprovider.LocalNodeProvider"  # Ray's fake provider, minus a leak
# FakeMultiNodeProvider's fixed ids: the head is ...00000, launched nodes count up from ...00001.
FAKE_HEAD_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"
FAKE_HEAD_TYPE = "ray.head.default"  # the provider tags its head with this type name
GIB = 1024 ** 3


def is_multinode(spec: ClusterSpec) -> bool:
    return spec.provider.type == "local" and bool(spec.worker_groups)


def config_path(state_dir: Path, spec: ClusterSpec) -> Path:
    return state_dir / f"{spec.name}.autoscaler.yaml"


def worker_resources(spec: ClusterSpec, group) -> dict[str, int]:
    """What each node of ``group`` advertises: the same numbers `ray up` renders, plus its object store.

    ``object_store_memory`` is popped by the provider into the raylet's store size: without it
    every fake node would size its store from the machine's memory.
    """
    res = node_resources(group, group.role, what=f"worker_groups.{group.name}")
    res["object_store_memory"] = int(spec.local.object_store_memory_gb * GIB)
    return res


def autoscaling_config(spec: ClusterSpec) -> dict:
    """The head's ``--autoscaling-config``: the spec's groups as node types of the fake provider."""
    # The head's own resources are what its `ray start` advertises (rayworks.cluster.local.head_command).
    head = {"CPU": spec.head.num_cpus, **({"GPU": spec.head.num_gpus} if spec.head.num_gpus else {}),
            **{k: int(v) for k, v in spec.head.resources.items()}}
    types = {FAKE_HEAD_TYPE: {"resources": head, "node_config": {}, "min_workers": 0, "max_workers": 0}}
    for g in spec.worker_groups:
        types[g.name] = {"resources": worker_resources(spec, g),
                         "labels": {LABEL_ROLE: g.role, LABEL_GROUP: g.name},
                         "node_config": {}, "min_workers": g.min_workers, "max_workers": g.max_workers}
    return {
        "cluster_name": spec.name,
        "max_workers": sum(g.max_workers for g in spec.worker_groups),
        "upscaling_speed": spec.autoscaler.upscaling_speed,
        "idle_timeout_minutes": spec.autoscaler.idle_timeout_minutes,
        "provider": {"type": "external", "module": PROVIDER, "gcs_address": f"127.0.0.1:{spec.local.gcs_port}",
                     "launch_multiple": True, "head_node_id": FAKE_HEAD_ID,
                     # Nodes start in-process (no SSH): no updaters, no launch-config hashing.
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "auth": {"ssh_user": os.environ.get("USER", "ray")},
        "available_node_types": types,
        "head_node_type": FAKE_HEAD_TYPE,
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def head_env(spec: ClusterSpec | None = None) -> dict[str, str]:
    """What the head's `ray start` needs for the fake provider under autoscaler v2.

    The worker nodes inherit it (the head's autoscaler starts them), so it also moves Serve's
    HAProxy files (``/tmp/haproxy-serve/<node id>/...`` by default) to a folder of this cluster:
    every local multi-node cluster's fake nodes have the same ids, and two clusters on one
    machine would otherwise share, and overwrite, each other's HAProxy config and sockets.
    Keyed by the GCS port (unique per running cluster) and short: unix socket paths stop at 107 bytes.
    """
    env = {"RAY_FAKE_CLUSTER": "1", "RAY_enable_autoscaler_v2": "1",
           "RAY_CLOUD_INSTANCE_ID": FAKE_HEAD_ID, "RAY_OVERRIDE_NODE_ID_FOR_TESTING": FAKE_HEAD_ID,
           "RAY_NODE_TYPE_NAME": FAKE_HEAD_TYPE,
           # The autoscaler's reconcile period (default 5 s): new demand is seen within a second.
           "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    if spec is not None and spec.serve.ha_proxy:
        d = f"/tmp/haproxy-serve-{spec.local.gcs_port}"
        env.update({"RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{d}/haproxy.cfg",
                    "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{d}/admin.sock",
                    "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": f"{d}/metrics.sock",
                    "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": d,
                    "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{d}/server-state"})
    return env


def cluster_status(spec: ClusterSpec) -> dict:
    """Nodes (group, resources, state) and pending demand, from the autoscaler v2 state in GCS."""
    from rayworks.cluster.auth import apply_auth_env

    apply_auth_env(spec)
    from ray.autoscaler.v2.sdk import get_cluster_status

    st = get_cluster_status(f"127.0.0.1:{spec.local.gcs_port}")
    nodes = []
    for state, group in (("active", st.active_nodes), ("idle", st.idle_nodes), ("pending", st.pending_nodes),
                         ("dead", st.failed_nodes)):
        for n in group:
            usage = {u.resource_name: {"total": u.total, "used": u.used}
                     for u in (n.resource_usage.usage if n.resource_usage else [])}
            nodes.append({"group": "head" if n.ray_node_type_name == FAKE_HEAD_TYPE else n.ray_node_type_name,
                          "state": state, "node_status": n.node_status, "node_id": n.node_id,
                          "instance_id": n.instance_id, "ip": n.ip_address,
                          "idle_s": round(n.resource_usage.idle_time_ms / 1000, 1) if n.resource_usage else None,
                          "resources": {k: v for k, v in usage.items() if not k.startswith("node:")},
                          "details": n.details or n.failure_detail})
    demand = [{"kind": kind, "bundle": b.bundle, "count": b.count}
              for kind, ds in (("task/actor", st.resource_demands.ray_task_actor_demand),
                               ("placement group", st.resource_demands.placement_group_demand),
                               ("constraint", st.resource_demands.cluster_constraint_demand))
              for d in ds for b in d.bundles_by_count]
    launches = [{"group": r.ray_node_type_name, "count": r.count, "state": r.state.value}
                for r in st.pending_launches]
    return {"nodes": nodes, "pending_demand": demand, "pending_launches": launches}


def format_status(st: dict) -> str:
    """The table `rayworks status` prints for a multi-node cluster."""
    lines = [f"{'GROUP':<10} {'STATE':<8} {'NODE':<14} {'IDLE_S':>7}  RESOURCES (used/total)"]
    for n in st["nodes"]:
        res = ", ".join(f"{k} {v['used']:g}/{v['total']:g}" for k, v in sorted(n["resources"].items())
                        if k in ("CPU", "GPU") or (k.startswith("role:") and "_group_" not in k))  # not PG copies
        node = (n["node_id"] or n["instance_id"] or "?")[-12:]
        idle = "" if n["idle_s"] is None else f"{n['idle_s']:.0f}"
        lines.append(f"{n['group']:<10} {n['state']:<8} {node:<14} {idle:>7}  {res}")
    for r in st["pending_launches"]:
        lines.append(f"{r['group']:<10} {'launch':<8} {'-':<14} {'':>7}  {r['count']} node(s) {r['state'].lower()}")
    lines.append("pending demand: " + ("; ".join(f"{d['count']} x {d['bundle']} ({d['kind']})"
                                                 for d in st["pending_demand"]) or "none"))
    return "\n".join(lines)


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        out[int(d.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    return out


def descendants(roots: set[int]) -> set[int]:
    """Every process below ``roots`` (children, their children, ...)."""
    parents = _parents()
    found, frontier = set(), set(roots)
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def node_pids(temp_dir: str, node_id: str) -> list[int]:
    """Processes of one node of this cluster: its raylet and everything under it (agents, workers).

    The raylet is the one whose arguments name the node id and a session under the cluster's temp
    dir (another local cluster's fake nodes have the same ids). The node's log monitor, a child of
    the head's autoscaler, is left: it only tails log files, and `rayworks down` stops it.
    """
    want = [f"--node_id={node_id}".encode(), f"--temp_dir={temp_dir.rstrip('/')}".encode()]
    raylets = set()
    for d in Path("/proc").glob("[0-9]*"):
        try:
            if d.stat().st_uid != os.getuid():
                continue
            args = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"/raylet") and all(w in args for w in want):
            raylets.add(int(d.name))
    return sorted(raylets | descendants(raylets)) if raylets else []


def kill_node(temp_dir: str, node_id: str) -> list[int]:
    """SIGKILLs every process of one fake node (a machine lost at once); returns the pids."""
    pids = node_pids(temp_dir, node_id)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    while time.time() < deadline and node_pids(temp_dir, node_id):
        time.sleep(0.2)
    return pids
