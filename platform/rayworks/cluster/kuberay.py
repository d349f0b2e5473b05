"""Cluster spec -> KubeRay manifests: RayCluster, RayJob, RayService (ray.io/v1).

One worker group per spec group, in-tree autoscaling on, GPU requests/limits as
``nvidia.com/gpu``, and Ray token auth through ``spec.authOptions`` (KubeRay >= 1.6):
the operator reads the token from the Kubernetes Secret named by
``auth.k8s_secret_name`` (key ``auth_token``) and injects ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``
into every Ray container. The manifests name the Secret, never a token.

Create the Secret once from the same token your laptop uses::

    kubectl -n <namespace> create secret generic rayworks-auth-token \
        --from-file=auth_token=$HOME/.ray/auth_token

Pods run ``runtime_env.image`` when the spec sets one, else the ``rayproject/ray``
image of the spec's Ray/Python version; the spec's pinned pip packages then reach
jobs through the RayJob/RayService runtime env.

Network: Ray's ports (GCS, raylet, object manager, Serve replicas) listen on every pod
interface; :func:`networkpolicy` admits only the cluster's own pods, the KubeRay operator
and RayJob submitters (dashboard port) and anyone on the Serve port (guarded by the API key).

Serve API keys: a RayService whose serve job names ``auth.api_keys_file`` reads it from a
Kubernetes Secret (``<cluster>-serve-api-keys``, key ``api_keys``) mounted read-only with mode
0400 at :data:`SERVE_KEYS_DIR` on every Ray pod; ``api_keys_file`` is rewritten to that path.
The pods' ``fsGroup`` is :data:`RAY_IMAGE_GID` (100, the group of ``ray`` in rayproject/ray).
"""

from __future__ import annotations

import re

import yaml

from rayworks.cluster.rayup import LABEL_GROUP, LABEL_ROLE, accelerator_resource, role_resource
from rayworks.config.cluster import ClusterSpec, NodeType, is_loopback_host
from rayworks.errors import ConfigError

API_VERSION = "ray.io/v1"
GPU_RESOURCE = "nvidia.com/gpu"
# Node label of NVIDIA's GPU feature discovery (GPU Operator), present on most GPU clusters.
# An accelerator_type not in the table below is used verbatim as the label value.
GPU_NODE_LABEL = "nvidia.com/gpu.product"
GPU_PRODUCTS = {
    "H100": "NVIDIA-H100-80GB-HBM3", "H200": "NVIDIA-H200", "A100": "NVIDIA-A100-SXM4-80GB",
    "A10G": "NVIDIA-A10G", "L4": "NVIDIA-L4", "L40S": "NVIDIA-L40S", "T4": "Tesla-T4",
    "V100": "Tesla-V100-SXM2-16GB",
}
GCS_PORT = 6379
CLIENT_PORT = 10001
LABEL_CLUSTER = "rayworks.io/cluster"
# Serve API keys inside the pods (a Secret volume); the file is SERVE_KEYS_DIR/SERVE_KEYS_KEY.
SERVE_KEYS_DIR = "/etc/rayworks/serve-keys"
SERVE_KEYS_KEY = "api_keys"
SERVE_KEYS_MODE = 0o400
# Group of the `ray` user in rayproject/ray images (uid 1000, gid 100). Secret volume files are
# root-owned; with fsGroup the kubelet gives the group read access (0400 becomes 0440, group
# fsGroup), so only the Ray processes of the pod can read the key. An image of your own
# (runtime_env.image) must run Ray as a member of group 100 too, or it cannot read the keys.
RAY_IMAGE_GID = 100


def k8s_name(name: str) -> str:
    """A DNS-1123 name (lowercase alphanumerics and '-', at most 63 characters)."""
    out = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].rstrip("-")
    if not out:
        raise ConfigError(f"name {name!r} has no characters usable in a Kubernetes name; use [a-z0-9-]")
    return out


def image(spec: ClusterSpec, gpu: bool) -> str:
    """Container image for a pod: the spec's, else Ray's own for its Ray/Python version."""
    if spec.runtime_env.image:
        return spec.runtime_env.image
    py = spec.python_version.replace(".", "")
    return f"rayproject/ray:{spec.ray_version}-py{py}{'-gpu' if gpu else ''}"


def _quantity_gb(gb: float) -> str:
    mib = round(gb * 1024)
    return f"{mib // 1024}Gi" if mib % 1024 == 0 else f"{mib}Mi"


def _resources(node: NodeType) -> dict:
    amount = {"cpu": str(node.num_cpus), "memory": _quantity_gb(node.memory_gb)}
    if node.num_gpus:
        amount[GPU_RESOURCE] = str(node.num_gpus)
    # requests == limits: Guaranteed QoS, and Ray sizes itself from the limits.
    return {"limits": dict(amount), "requests": dict(amount)}


def _env(spec: ClusterSpec) -> list[dict]:
    # The spec's own env vars, then Serve's ingress mode (read by the controller and proxies at
    # start): what the spec's fields decide comes last. Auth is the operator's (authOptions).
    _check_env(spec.runtime_env.env_vars, "runtime_env.env_vars")  # the spec may have been changed after loading
    plain = {**spec.runtime_env.env_vars, **spec.serve.node_env()}
    env = [{"name": k, "value": v} for k, v in sorted(plain.items())]
    # Secrets the spec names come from a Secret `<cluster>-env` that the operator of the
    # cluster creates; optional so a cluster without it still starts.
    env += [{"name": n, "valueFrom": {"secretKeyRef": {"name": f"{spec.name}-env", "key": n, "optional": True}}}
            for n in sorted(spec.runtime_env.secret_env_vars)]
    return env


def serve_keys_secret(spec: ClusterSpec) -> str:
    """Name of the Secret holding the Serve API keys of a RayService on this cluster."""
    return k8s_name(f"{spec.name}-serve-api-keys")


def _container(spec: ClusterSpec, node: NodeType, name: str, ports: list[dict]) -> dict:
    c = {"name": name, "image": image(spec, node.num_gpus > 0), "resources": _resources(node), "ports": ports}
    env = _env(spec)
    if env:
        c["env"] = env
    return c


def _check_env(env: dict, where: str) -> None:
    from rayworks.config.envcheck import env_var_problem

    for k, v in env.items():
        problem = env_var_problem(k, str(v), where)
        if problem:
            raise ConfigError(problem)


def _pod_template(spec: ClusterSpec, node: NodeType, container: dict, role: str) -> dict:
    pod: dict = {"containers": [container]}
    if node.accelerator_type:
        pod["nodeSelector"] = {GPU_NODE_LABEL: GPU_PRODUCTS.get(node.accelerator_type, node.accelerator_type)}
    if node.num_gpus:
        # GPU node pools are usually tainted so that only GPU pods land there.
        pod["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    labels = {"app.kubernetes.io/name": "rayworks", LABEL_ROLE: role, LABEL_CLUSTER: spec.name}
    return {"metadata": {"labels": labels}, "spec": pod}


def _group_resources(node: NodeType, role: str) -> dict[str, str]:
    res = {role_resource(role): "1"}
    if node.accelerator_type:
        res[accelerator_resource(node.accelerator_type)] = "1"
    res.update({k: f"{v:g}" for k, v in node.resources.items()})
    return dict(sorted(res.items()))


def raycluster_spec(spec: ClusterSpec) -> dict:
    """The ``spec`` of a RayCluster (also the rayClusterSpec of RayJob/RayService)."""
    if spec.provider.type != "kubernetes":
        raise ConfigError(f"provider.type={spec.provider.type}: the kuberay target renders kubernetes specs; "
                          "use --target ray-up for aws/gcp")
    if is_loopback_host(spec.dashboard.host):
        raise ConfigError(f"dashboard.host={spec.dashboard.host!r}: on Kubernetes the KubeRay operator reaches the "
                          "dashboard through the head Service; set dashboard.host: 0.0.0.0 (token auth stays on)")
    metrics = {"name": "metrics", "containerPort": spec.metrics.export_port}
    head_ports = [{"name": "gcs-server", "containerPort": GCS_PORT},
                  {"name": "dashboard", "containerPort": spec.dashboard.port},
                  {"name": "client", "containerPort": CLIENT_PORT},
                  {"name": "serve", "containerPort": spec.serve.port}, metrics]
    head = {
        "rayStartParams": {"dashboard-host": spec.dashboard.host, "dashboard-port": str(spec.dashboard.port),
                           "metrics-export-port": str(spec.metrics.export_port)},
        "labels": {LABEL_ROLE: "head"},
        "resources": _group_resources(spec.head, "head"),
        "template": _pod_template(spec, spec.head, _container(spec, spec.head, "ray-head", head_ports), "head"),
    }
    workers = []
    for g in spec.worker_groups:
        c = _container(spec, g, "ray-worker", [dict(metrics)])
        workers.append({
            "groupName": g.name,
            "replicas": g.min_workers,
            "minReplicas": g.min_workers,
            "maxReplicas": g.max_workers,
            "rayStartParams": {"metrics-export-port": str(spec.metrics.export_port)},
            "labels": {LABEL_ROLE: g.role, LABEL_GROUP: g.name},
            "resources": _group_resources(g, g.role),
            "template": _pod_template(spec, g, c, g.role),
        })
    out: dict = {
        "rayVersion": spec.ray_version,
        "enableInTreeAutoscaling": True,
        "autoscalerOptions": {"version": "v2", "upscalingMode": "Default",
                              "idleTimeoutSeconds": int(spec.autoscaler.idle_timeout_minutes * 60)},
        "headGroupSpec": head,
        "workerGroupSpecs": workers,
    }
    if spec.auth.mode == "token":
        out["authOptions"] = {"mode": "token", "secretName": spec.auth.k8s_secret_name}
    if spec.head.fault_tolerance == "redis":
        # GCS state in Redis: a restarted head pod finds its workers, actors and Serve apps again.
        # The password comes from a Secret (`kubectl create secret generic <name> --from-file=password=...`).
        out["gcsFaultToleranceOptions"] = {
            "redisAddress": spec.head.redis_address,
            "redisPassword": {"valueFrom": {"secretKeyRef": {"name": spec.head.redis_password_secret,
                                                             "key": "password"}}}}
    return out


def _metadata(spec: ClusterSpec, name: str, component: str) -> dict:
    return {"name": k8s_name(name), "namespace": spec.provider.namespace,
            "labels": {"app.kubernetes.io/name": "rayworks", "app.kubernetes.io/component": component,
                       "app.kubernetes.io/managed-by": "rayworks", "rayworks.io/cluster": spec.name}}


def raycluster(spec: ClusterSpec) -> dict:
    """A RayCluster manifest for a kubernetes spec.

    Raises:
        ConfigError: the spec is not a kubernetes one, or its dashboard binds loopback.
    """
    return {"apiVersion": API_VERSION, "kind": "RayCluster",
            "metadata": _metadata(spec, spec.name, "cluster"), "spec": raycluster_spec(spec)}


def _block_yaml(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False, width=4096)


def rayjob(spec: ClusterSpec, name: str, entrypoint: str, runtime_env: dict) -> dict:
    """A RayJob that brings up the spec's cluster, runs ``entrypoint`` and tears it down.

    Args:
        spec: a kubernetes cluster spec.
        name: job name (made DNS-safe).
        entrypoint: shell command run by ``ray job submit``, e.g. ``python jobs/train.py --config ...``.
        runtime_env: Ray runtime env for the job (pip, env_vars, working_dir...); no secret values.

    Returns:
        The RayJob manifest as a dict.
    """
    job_spec: dict = {
        "entrypoint": entrypoint,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": 600,
        "submissionMode": "K8sJobMode",
        "rayClusterSpec": raycluster_spec(spec),
    }
    if runtime_env:
        _check_env(runtime_env.get("env_vars") or {}, "runtime_env.env_vars")
        job_spec["runtimeEnvYAML"] = _block_yaml(runtime_env)
    return {"apiVersion": API_VERSION, "kind": "RayJob", "metadata": _metadata(spec, name, "job"), "spec": job_spec}


def rayservice(spec: ClusterSpec, name: str, serve_config_v2: dict) -> dict:
    """A RayService running ``serve_config_v2`` (Serve's multi-app config) on the spec's cluster.

    Serve's proxy must listen on all pod interfaces for the serve Service to reach it, so
    ``http_options`` defaults to ``0.0.0.0:<serve.port>`` when the config does not set it.
    An app whose args name ``auth.api_keys_file`` reads the keys from the Secret
    :func:`serve_keys_secret` mounted on every Ray pod (see the module docstring).
    """
    import copy

    cfg = copy.deepcopy(serve_config_v2)
    cfg.setdefault("http_options", {"host": "0.0.0.0", "port": spec.serve.port})
    mount = False
    for app in cfg.get("applications", []):
        auth = (app.get("args") or {}).get("auth") or {}
        if auth.get("api_keys_file"):
            # A laptop path (`~/...`) means nothing in a pod: the keys come from the mounted Secret.
            auth["api_keys_file"] = f"{SERVE_KEYS_DIR}/{SERVE_KEYS_KEY}"
            mount = True
        _check_env((app.get("runtime_env") or {}).get("env_vars") or {}, "applications.runtime_env.env_vars")
    cluster = raycluster_spec(spec)
    if mount:
        _mount_serve_keys(spec, cluster)
    return {"apiVersion": API_VERSION, "kind": "RayService", "metadata": _metadata(spec, name, "service"),
            "spec": {"serveConfigV2": _block_yaml(cfg), "rayClusterConfig": cluster}}


def _mount_serve_keys(spec: ClusterSpec, cluster: dict) -> None:
    """Mounts the Serve API-key Secret read-only (mode 0400, group fsGroup) into every Ray pod."""
    for group in [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]:
        volume = {"name": "serve-api-keys",  # one dict per pod: no YAML anchors in the output
                  "secret": {"secretName": serve_keys_secret(spec), "defaultMode": SERVE_KEYS_MODE,
                             "items": [{"key": SERVE_KEYS_KEY, "path": SERVE_KEYS_KEY, "mode": SERVE_KEYS_MODE}]}}
        pod = group["template"]["spec"]
        pod["volumes"] = pod.get("volumes", []) + [volume]
        pod["securityContext"] = {**pod.get("securityContext", {}), "fsGroup": RAY_IMAGE_GID}
        for c in pod["containers"]:
            c["volumeMounts"] = c.get("volumeMounts", []) + [
                {"name": "serve-api-keys", "mountPath": SERVE_KEYS_DIR, "readOnly": True}]


def networkpolicy(spec: ClusterSpec) -> dict:
    """A NetworkPolicy for every Ray pod of the spec's clusters (RayCluster, RayJob, RayService).

    Admits: the cluster's own pods (all ports: Ray's are many and partly dynamic); the KubeRay
    operator (any namespace) and the namespace's RayJob submitter pods on the dashboard port
    (job and Serve status, `ray job submit`; token auth guards it); anyone on the Serve port
    (the Serve Service's traffic; the serve API-key gate guards it). Nothing else, so the GCS,
    Ray Client, the agents, metrics and replica ports are closed to other pods.
    Needs a CNI that enforces NetworkPolicy (Calico, Cilium, most managed clusters).
    """
    ours = {"matchLabels": {LABEL_CLUSTER: spec.name}}
    dashboard = [{"protocol": "TCP", "port": spec.dashboard.port}]
    ingress = [
        {"from": [{"podSelector": ours}]},
        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}},
                  {"podSelector": {"matchLabels": {"ray.io/originated-from-crd": "RayJob"}}}],
         "ports": dashboard},
        {"ports": [{"protocol": "TCP", "port": spec.serve.port}]},
    ]
    # Prometheus (pods labelled app.kubernetes.io/name=prometheus, any namespace) scrapes every
    # pod's metrics export port: read-only, no auth in Ray.
    ingress.append({"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "prometheus"}}}], "ports": [{"protocol": "TCP", "port": spec.metrics.export_port}]})
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _metadata(spec, f"{spec.name}-ray", "network-policy"),
            "spec": {"podSelector": ours, "policyTypes": ["Ingress"], "ingress": ingress}}
