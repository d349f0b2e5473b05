"""Cluster spec -> a Ray cluster-launcher YAML for ``ray up`` (AWS, GCP).

The result is a complete config (every top-level key Ray's ``defaults.yaml`` would
fill in is set here), so what the golden file shows is what ``ray up`` runs. It is
checked in tests with Ray's own validator, ``ray.autoscaler._private.util.validate_config``,
which uses the ``ray-schema.json`` shipped in the ray wheel.

Auth: nodes start with ``RAY_AUTH_MODE=token`` and read the token from
``~/.ray/auth_token``, which ``file_mounts`` copies from the launching machine. Only
the file's *path* is in the YAML, never its value.

Usage::

    rayworks cluster render cluster/aws.yaml --target ray-up --out /tmp/out
    ray up /tmp/out/aws.ray-up.yaml
"""

from __future__ import annotations

import shlex

from rayworks.config.cluster import ClusterSpec, NodeType
from rayworks.errors import ConfigError

HEAD_TYPE = "ray.head"  # a dot keeps it apart from worker group names ([a-z0-9-])
REMOTE_TOKEN_PATH = "~/.ray/auth_token"  # Ray's default token location on every node
# head.fault_tolerance: redis. The head reads the password from this file at start (file_mounts
# copies it from the launching machine); the YAML names the file, never the password.
REDIS_PASSWORD_PATH = "~/.rayworks/redis_password"
GCS_PORT = 6379
OBJECT_MANAGER_PORT = 8076
LABEL_ROLE = "rayworks.io/role"
LABEL_GROUP = "rayworks.io/group"

# Packages the head node needs for the autoscaler's cloud API (Ray's own defaults.yaml).
CLOUD_HEAD_PACKAGES = {"aws": ["boto3>=1.4.8"], "gcp": ["google-api-python-client==1.7.8"]}

# GCP: a Deep Learning VM image with NVIDIA drivers and CUDA, used on every node so
# CPU and GPU nodes run the same Python. Check that the family is current before `ray up`.
GCP_SOURCE_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu128-ubuntu-2204-nvidia-570"
# Machine families whose GPUs come attached; GCE rejects or ignores guestAccelerators there.
GCP_BUNDLED_GPU_FAMILIES = ("a2-", "a3-", "a4-", "g2-", "g4-")
GCP_ACCELERATORS = {
    "T4": "nvidia-tesla-t4", "V100": "nvidia-tesla-v100", "P100": "nvidia-tesla-p100",
    "P4": "nvidia-tesla-p4", "A100": "nvidia-tesla-a100", "A100-80G": "nvidia-a100-80gb",
    "L4": "nvidia-l4", "H100": "nvidia-h100-80gb", "H200": "nvidia-h200-141gb",
}


def role_resource(role: str) -> str:
    """Name of the custom Ray resource each node of a group advertises (one per node).

    Jobs pin work to a group with a fractional request, e.g. ``{"role:train": 0.01}``.
    """
    return f"role:{role}"


def accelerator_resource(accelerator_type: str) -> str:
    """Ray's own resource name for a GPU type (what ``@ray.remote(accelerator_type=...)`` asks for)."""
    return f"accelerator_type:{accelerator_type}"


def node_resources(node: NodeType, role: str, *, what: str) -> dict[str, int]:
    """Logical resources of one node: CPU, GPU, accelerator type, role, custom extras.

    Ray's schema wants whole numbers here, so fractional custom resources are refused.
    """
    res: dict[str, int] = {"CPU": node.num_cpus}
    if node.num_gpus:
        res["GPU"] = node.num_gpus
    if node.accelerator_type:
        res[accelerator_resource(node.accelerator_type)] = 1
    res[role_resource(role)] = 1
    for k, v in node.resources.items():
        if float(v) != int(v):
            raise ConfigError(f"{what}.resources.{k}={v:g}: `ray up` needs whole-number custom resources; "
                              "round it (e.g. 1) or scale the unit")
        res[k] = int(v)
    return dict(sorted(res.items()))


def _aws_node_config(node: NodeType) -> dict:
    # No ImageId: Ray's AWS provider picks its Deep Learning AMI for the region
    # (drivers and CUDA included), which is what GPU nodes need.
    return {
        "InstanceType": node.instance_type,
        "BlockDeviceMappings": [{"DeviceName": "/dev/sda1",
                                 "Ebs": {"VolumeSize": node.disk_size_gb, "VolumeType": "gp3"}}],
    }


def gcp_accelerator(accelerator_type: str) -> str:
    """GCE accelerator name for a spec accelerator type (e.g. T4 -> nvidia-tesla-t4)."""
    if accelerator_type.startswith("nvidia-"):
        return accelerator_type
    try:
        return GCP_ACCELERATORS[accelerator_type]
    except KeyError:
        raise ConfigError(f"accelerator_type={accelerator_type!r} has no known GCE accelerator name; use one of "
                          f"{sorted(GCP_ACCELERATORS)} or a GCE name such as nvidia-tesla-t4") from None


def _gcp_node_config(node: NodeType) -> dict:
    cfg: dict = {
        "machineType": node.instance_type,
        "disks": [{"boot": True, "autoDelete": True, "type": "PERSISTENT",
                   "initializeParams": {"diskSizeGb": node.disk_size_gb, "sourceImage": GCP_SOURCE_IMAGE}}],
    }
    if node.num_gpus:
        if not node.instance_type.startswith(GCP_BUNDLED_GPU_FAMILIES):
            if not node.accelerator_type:
                raise ConfigError(f"{node.instance_type} with num_gpus: {node.num_gpus} needs accelerator_type "
                                  "(e.g. T4, L4, V100) to attach GPUs on GCP")
            cfg["guestAccelerators"] = [{"acceleratorType": gcp_accelerator(node.accelerator_type),
                                         "acceleratorCount": node.num_gpus}]
        # GPU VMs cannot live-migrate; the DLVM image installs the driver on first boot.
        cfg["scheduling"] = {"onHostMaintenance": "TERMINATE"}
        cfg["metadata"] = {"items": [{"key": "install-nvidia-driver", "value": "True"}]}
    return cfg


def _start_env(spec: ClusterSpec, head: bool) -> list[str]:
    env = []
    if spec.auth.mode == "token":
        env.append("RAY_AUTH_MODE=token")
    if head and spec.head.fault_tolerance == "redis":
        env.append(f"RAY_REDIS_ADDRESS={spec.head.redis_address}")
    if head and spec.metrics.prometheus_url:
        env.append(f"RAY_PROMETHEUS_HOST={spec.metrics.prometheus_url}")
    if head and spec.metrics.grafana_url:
        env.append(f"RAY_GRAFANA_HOST={spec.metrics.grafana_url}")
    # Serve's ingress mode is read by the controller and proxies at start: every node needs it.
    env += [f"{k}={v}" for k, v in spec.serve.node_env().items()]
    return env


def start_args(spec: ClusterSpec, head: bool) -> list[str]:
    """The argument list of one node's ``env ... ray start ...`` (what :func:`start_commands` quotes).

    ``$RAY_HEAD_IP`` (set by the cluster launcher on workers) is the one shell expansion the
    worker command keeps; it stays outside the quoted arguments.
    """
    args = ["env", *_start_env(spec, head), "ray", "start"]
    if head:
        args += ["--head", f"--port={GCS_PORT}", f"--object-manager-port={OBJECT_MANAGER_PORT}",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml",
                 f"--dashboard-host={spec.dashboard.host}", f"--dashboard-port={spec.dashboard.port}"]
    else:
        args += [f"--object-manager-port={OBJECT_MANAGER_PORT}"]
    return args + [f"--metrics-export-port={spec.metrics.export_port}", "--disable-usage-stats"]


def _quote(arg: str) -> str:
    # `~/...` must stay unquoted for the shell to expand it; the rest is quoted (validated or not).
    if arg.startswith("--autoscaling-config=~/") and shlex.quote(arg[len("--autoscaling-config=~/"):]) == \
            arg[len("--autoscaling-config=~/"):]:
        return arg
    return shlex.quote(arg)


def start_commands(spec: ClusterSpec) -> tuple[list[str], list[str]]:
    """``ray start`` for the head and for workers: token auth, metrics export, dashboard host.

    Every value is shell-quoted (hosts are also validated in the spec), so
    ``shlex.split`` of the command after ``ulimit -n 65536;`` gives :func:`start_args`.
    """
    head = "ulimit -n 65536; " + " ".join(_quote(a) for a in start_args(spec, True))
    if spec.head.fault_tolerance == "redis":  # read on the node at start: the value is in no file we write
        head += f' --redis-password="$(cat {REDIS_PASSWORD_PATH})"'
    worker_args = start_args(spec, False)
    at = worker_args.index("start") + 1
    worker = ("ulimit -n 65536; " + " ".join(_quote(a) for a in worker_args[:at])
              + f' --address="$RAY_HEAD_IP":{GCS_PORT} ' + " ".join(_quote(a) for a in worker_args[at:]))
    return ["ray stop", head], ["ray stop", worker]


def setup_commands(spec: ClusterSpec) -> list[str]:
    """pip installs of the spec's pinned packages (torch first: DeepSpeed's build imports it)."""
    pins = list(spec.runtime_env.pip)
    if not pins:
        return []
    first = [p for p in pins if p.replace(" ", "").startswith("torch==")]
    rest = [p for p in pins if p not in first]
    return [f"pip install {' '.join(shlex.quote(p) for p in group)}" for group in (first, rest) if group]


def docker_config(spec: ClusterSpec) -> dict | None:
    """Container settings when the spec names an image (setup then runs inside it)."""
    if not spec.runtime_env.image:
        return None
    return {"image": spec.runtime_env.image, "container_name": "ray_container", "pull_before_run": True,
            "run_options": ["--ulimit nofile=65536:65536"]}


def render_ray_up(spec: ClusterSpec) -> dict:
    """The ``ray up`` cluster-launcher config for an aws or gcp spec.

    Args:
        spec: a validated cluster spec with ``provider.type`` aws or gcp.

    Returns:
        A dict that passes ``ray.autoscaler._private.util.validate_config``.

    Raises:
        ConfigError: the provider is not aws/gcp, or a value cannot be expressed for ``ray up``.
    """
    ptype = spec.provider.type
    if ptype not in ("aws", "gcp"):
        raise ConfigError(f"provider.type={ptype}: the ray-up target renders aws or gcp specs; "
                          "use --target kuberay for kubernetes, `rayworks up` for local")
    node_config = _aws_node_config if ptype == "aws" else _gcp_node_config
    provider: dict = {"type": ptype, "region": spec.provider.region}
    if spec.provider.availability_zone:
        provider["availability_zone"] = spec.provider.availability_zone
    if ptype == "gcp":
        provider["project_id"] = spec.provider.project_id
    else:
        provider["cache_stopped_nodes"] = False  # terminate idle nodes: no surprise bills

    types = {HEAD_TYPE: {
        "resources": node_resources(spec.head, "head", what="head"),
        "labels": {LABEL_ROLE: "head"},
        "node_config": node_config(spec.head),
        "min_workers": 0, "max_workers": 0,
    }}
    for g in spec.worker_groups:
        types[g.name] = {
            "resources": node_resources(g, g.role, what=f"worker_groups.{g.name}"),
            "labels": {LABEL_ROLE: g.role, LABEL_GROUP: g.name},
            "node_config": node_config(g),
            "min_workers": g.min_workers, "max_workers": g.max_workers,
        }
    head_start, worker_start = start_commands(spec)
    cfg: dict = {
        "cluster_name": spec.name,
        "max_workers": sum(g.max_workers for g in spec.worker_groups),
        "upscaling_speed": spec.autoscaler.upscaling_speed,
        "idle_timeout_minutes": spec.autoscaler.idle_timeout_minutes,
        "provider": provider,
        "auth": {"ssh_user": "ubuntu"},
        "available_node_types": types,
        "head_node_type": HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": ["**/.git", "**/.git/**", "**/.venv/**"],
        "rsync_filter": [".gitignore"],
        "initialization_commands": [],
        "setup_commands": setup_commands(spec),
        "head_setup_commands": [f"pip install {' '.join(shlex.quote(p) for p in CLOUD_HEAD_PACKAGES[ptype])}"],
        "worker_setup_commands": [],
        "head_start_ray_commands": head_start,
        "worker_start_ray_commands": worker_start,
    }
    if spec.auth.mode == "token":
        # Remote path -> local path. The local side is the launching machine's token file
        # (`rayworks up` or `ray get-auth-token --generate` creates it); never its value.
        cfg["file_mounts"] = {REMOTE_TOKEN_PATH: spec.auth.token_path or REMOTE_TOKEN_PATH}
    if spec.head.fault_tolerance == "redis":
        cfg["file_mounts"][REDIS_PASSWORD_PATH] = REDIS_PASSWORD_PATH
    docker = docker_config(spec)
    if docker:
        cfg["docker"] = docker
    return cfg
