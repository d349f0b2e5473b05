"""The cluster spec: one strict model describing a cluster once.

The same spec starts the local cluster (``rayworks up``), renders to a ``ray up``
cluster-launcher YAML and to KubeRay manifests (``rayworks cluster render``), and is
what job submission and the preflight check against.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from rayworks.config.base import StrictModel, is_loopback_host, load_yaml_model
from rayworks.config.envcheck import check_env_vars, check_secret_names
from rayworks.config.tracking import Tracking, check_tracking

Role = Literal["data", "train", "serve", "general"]
# RFC 1123 host names: what may follow `--dashboard-host=` in a shell command or a manifest.
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
# Identifiers that land in shell commands, file names and manifests (regions, zones, projects,
# namespaces, instance types, accelerator names): letters, digits and . _ - only.
_IDENT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# http(s)://host[:port][/path] with no whitespace, quotes or shell metacharacters.
_URL = r"^https?://[A-Za-z0-9.\[\]:-]+(/[A-Za-z0-9._~/%-]*)?$"


def _check_host(value: str) -> str:
    """An IP address or an RFC 1123 host name; anything else (spaces, ';', quotes) is refused."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not _HOSTNAME.match(value):
        raise ValueError(f"{value!r} is not an IP address or host name (e.g. 127.0.0.1, 0.0.0.0, head.example.com)")
    return value


Host = Annotated[str, AfterValidator(_check_host)]


class Provider(StrictModel):
    """Where the cluster runs."""

    type: Literal["local", "aws", "gcp", "kubernetes"] = Field(
        "local", description="local: one Ray head on this machine; aws/gcp: `ray up`; kubernetes: KubeRay.")
    region: str | None = Field(None, pattern=_IDENT, description="Cloud region (aws, gcp), e.g. us-west-2 or us-central1.")
    availability_zone: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._,-]{0,127}$",
                                          description="Zone(s) within the region, e.g. us-west-2a or us-central1-a.")
    project_id: str | None = Field(None, pattern=_IDENT, description="GCP project id (gcp only).")
    namespace: str | None = Field(None, pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description="Kubernetes namespace for the RayCluster (kubernetes only).")

    @model_validator(mode="after")
    def _check(self) -> "Provider":
        need = {"aws": ["region"], "gcp": ["region", "availability_zone", "project_id"], "kubernetes": ["namespace"]}
        for name in need.get(self.type, []):
            if not getattr(self, name):
                raise ValueError(f"provider.type={self.type} needs provider.{name}")
        return self


class NodeType(StrictModel):
    """Resources of one node (the head, or each node of a worker group)."""

    instance_type: str | None = Field(None, pattern=_IDENT, description="Cloud instance/machine type (aws, gcp). Ignored for local/kubernetes.")
    num_cpus: int = Field(..., ge=1, description="CPUs Ray advertises on the node (logical; may exceed physical cores locally).")
    num_gpus: int = Field(0, ge=0, description="GPUs per node.")
    accelerator_type: str | None = Field(None, pattern=_IDENT, description="GPU type, e.g. H100, A100, L4. Only on nodes with num_gpus > 0.")
    memory_gb: float = Field(..., gt=0, description="Memory per node in GiB (pod memory on kubernetes).")
    disk_size_gb: int = Field(200, ge=10, description="Boot disk size in GiB for cloud nodes.")
    resources: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.:/-]{0,63}$")], float] = Field(
        default_factory=dict, description="Extra custom Ray resources on the node (name: amount).")

    @model_validator(mode="after")
    def _check_gpu(self) -> "NodeType":
        if self.accelerator_type and self.num_gpus == 0:
            raise ValueError(f"accelerator_type={self.accelerator_type!r} on a node with num_gpus: 0; "
                             "set num_gpus > 0 or remove accelerator_type")
        return self


class HeadNode(NodeType):
    """The head node. Jobs' drivers run here; keep its CPUs modest on the cloud."""

    fault_tolerance: Literal["none", "redis"] = Field(
        "none", description="redis: the GCS keeps cluster state in Redis, so a restarted head finds its nodes, "
                            "actors and Serve apps again (kubernetes: gcsFaultToleranceOptions; ray up: the head's "
                            "RAY_REDIS_ADDRESS; local: a redis-server rayworks starts on local.redis_port, and a "
                            "supervisor that restarts a dead GCS). The Redis password lives in a Secret / a file on "
                            "the head, never in a render.")
    redis_address: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}:[0-9]{1,5}$",
                                      description="host:port of the Redis the GCS uses (fault_tolerance: redis).")
    redis_password_secret: str = Field("rayworks-redis-password", pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$",
                                       description="Kubernetes Secret (key `password`) holding the Redis password "
                                                   "(kubernetes only).")


class WorkerGroup(NodeType):
    """A named group of identical worker nodes, scaled between min and max."""

    name: str = Field(..., pattern=r"^[a-z][a-z0-9-]{0,38}$", description="Group name (lowercase, DNS-safe).")
    role: Role = Field(..., description="What the group is for: data (prep), train, serve or general.")
    min_workers: int = Field(0, ge=0, description="Nodes kept up at all times.")
    max_workers: int = Field(1, ge=0, description="Most nodes the autoscaler may start.")

    @model_validator(mode="after")
    def _check_range(self) -> "WorkerGroup":
        if self.min_workers > self.max_workers:
            raise ValueError(f"min_workers ({self.min_workers}) > max_workers ({self.max_workers}) "
                             f"in group {self.name!r}; lower min_workers or raise max_workers")
        return self


class Storage(StrictModel):
    """Shared storage every job reads from and writes to."""

    uri: str = Field(..., description="A local directory (local clusters, or a shared mount), s3://bucket/prefix or gs://bucket/prefix.")

    @property
    def is_remote(self) -> bool:
        return self.uri.startswith(("s3://", "gs://"))


class RuntimeEnv(StrictModel):
    """What every job gets: pinned packages or a container image, and env vars."""

    pip: list[str] = Field(default_factory=list, description="Pinned pip requirements installed on every node (setup commands / image build).")
    image: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$", description="Container image for every node (ray up docker / KubeRay pods).")
    env_vars: dict[str, str] = Field(default_factory=dict, description="Non-secret environment variables for every job.")
    secret_env_vars: list[str] = Field(
        default_factory=list,
        description="Names of secrets passed from the submitting shell's environment at submit time; never written to files.")

    @model_validator(mode="after")
    def _no_secrets(self) -> "RuntimeEnv":
        # Names and values: a DATABASE_URL with a password or an `hf_...` value is as secret as HF_TOKEN.
        check_env_vars(self.env_vars, "runtime_env.env_vars")
        check_secret_names(self.secret_env_vars, "runtime_env.secret_env_vars")
        return self


class Auth(StrictModel):
    """Ray token authentication for the GCS, dashboard and Jobs API."""

    mode: Literal["token", "disabled"] = Field(
        "token", description="token (default) or disabled. disabled is refused except on a local cluster whose every "
                             "listener is on loopback (dashboard.host and serve.host loopback, serve.ha_proxy: false).")
    token_path: str | None = Field(None, description="Token file; default ~/.ray/auth_token (Ray's own default).")
    k8s_secret_name: str = Field("rayworks-auth-token", pattern=r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$", description="Kubernetes Secret that holds the token (kubernetes only).")


class Dashboard(StrictModel):
    """Ray dashboard and Jobs API."""

    host: Host = Field("127.0.0.1", description="Bind address; loopback by default. Use port-forwarding or a tunnel to reach it.")
    port: int = Field(8265, ge=1, le=65535, description="Dashboard / Jobs API port.")


class Metrics(StrictModel):
    """Prometheus metrics export."""

    export_port: int = Field(8080, ge=1, le=65535, description="Port each node serves /metrics on.")
    prometheus_url: str | None = Field(None, pattern=_URL, description="Prometheus the Ray dashboard queries (RAY_PROMETHEUS_HOST).")
    grafana_url: str | None = Field(None, pattern=_URL, description="Grafana the Ray dashboard links to (RAY_GRAFANA_HOST).")


class ServeHTTP(StrictModel):
    """Ray Serve's HTTP proxy."""

    host: Host = Field("127.0.0.1", description="Serve proxy bind address.")
    port: int = Field(8000, ge=1, le=65535, description="Serve HTTP port (OpenAI-compatible API).")
    ha_proxy: bool = Field(
        True, description="Run Serve's HAProxy ingress (RAY_SERVE_ENABLE_HA_PROXY=1) on every node. It forwards "
                          "HTTP straight to ingress replicas and lets a one-model serve job stream from vLLM's own "
                          "app (serve job performance.direct_streaming): the same throughput as vLLM's server. "
                          "HAProxy's read-only stats page and exporter then listen on all interfaces (ports below).")
    haproxy_stats_port: int = Field(8404, ge=1, le=65535, description="HAProxy's stats page port (ha_proxy only).")
    fallback_proxy_port: int = Field(
        8500, ge=1, le=65535,
        description="Port of the fallback proxy Serve runs on the head beside HAProxy (ha_proxy only, bound to "
                    "serve.host; RAY_SERVE_FALLBACK_PROXY_HTTP_PORT). Give each cluster on one machine its own.")
    haproxy_metrics_port: int = Field(9101, ge=1, le=65535, description="HAProxy's Prometheus exporter port "
                                                                          "(ha_proxy only).")
    replica_drain_s: float = Field(
        5, ge=0, le=300,
        description="How long a replaced or deleted ingress replica stays reachable before it refuses new "
                    "connections (ha_proxy only; RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S). Ray's default "
                    "of 30 s is sized for external load balancers; here only the node's HAProxy reaches replica "
                    "ports, it reloads within a second and retries refused connections elsewhere. In-flight "
                    "requests still get the serve job's rollout.graceful_shutdown_timeout_s.")

    def node_env(self) -> dict[str, str]:
        """Env vars every node's `ray start` needs for this Serve setup (cluster-wide: read at start).

        HAProxy's own files live under a per-node dir that Ray names; its two ports come from
        the spec, so two local clusters on one machine (the demo beside the tests) never clash.
        """
        if not self.ha_proxy:
            return {}
        return {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_HAPROXY_STATS_PORT": str(self.haproxy_stats_port),
                "RAY_SERVE_HAPROXY_METRICS_PORT": str(self.haproxy_metrics_port),
                "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(self.fallback_proxy_port),
                "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": f"{self.replica_drain_s:g}"}


class LocalOptions(StrictModel):
    """Only for provider.type=local: ports and paths of the local head."""

    gcs_port: int = Field(6379, ge=1, le=65535, description="GCS port of the local head.")
    ray_client_port: int = Field(10001, ge=1, le=65535, description="Ray Client server port.")
    dashboard_agent_listen_port: int = Field(52365, ge=1, le=65535, description="Dashboard agent HTTP port.")
    temp_dir: str = Field("/tmp/ray", pattern=r"^[^\x00-\x1f]+$",
                          description="Ray's session/log directory for this cluster (no control characters).")
    object_store_memory_gb: float = Field(2.0, gt=0, description="Object store size in GiB (the head's, and each "
                                                                  "local worker node's).")
    redis_port: int = Field(6380, ge=1, le=65535, description="Port of the redis-server rayworks runs on 127.0.0.1 "
                                                               "for head.fault_tolerance: redis (password generated).")


class Autoscaler(StrictModel):
    """Autoscaler behaviour for cloud and KubeRay clusters."""

    idle_timeout_minutes: float = Field(5, gt=0, description="Idle workers are removed after this many minutes.")
    upscaling_speed: float = Field(1.0, gt=0, description="Ray autoscaler upscaling_speed.")


class ClusterSpec(StrictModel):
    """A cluster, described once."""

    name: str = Field(..., pattern=r"^[a-z][a-z0-9-]{0,38}$", description="Cluster name (lowercase, DNS-safe).")
    ray_version: str = Field("2.60.0", pattern=r"^[0-9]+\.[0-9]+\.[0-9]+([a-z0-9.+-]*)$", description="Ray version on every node.")
    python_version: str = Field("3.11", pattern=r"^3\.[0-9]{1,2}$", description="Python version of the node images.")
    provider: Provider = Field(default_factory=Provider, description="Where it runs.")
    head: HeadNode = Field(..., description="The head node.")
    worker_groups: list[WorkerGroup] = Field(default_factory=list, description="Named worker groups.")
    storage: Storage = Field(..., description="Shared artifact storage.")
    runtime_env: RuntimeEnv = Field(default_factory=RuntimeEnv, description="What every job gets.")
    auth: Auth = Field(default_factory=Auth, description="Token auth (on by default).")
    dashboard: Dashboard = Field(default_factory=Dashboard, description="Dashboard and Jobs API.")
    metrics: Metrics = Field(default_factory=Metrics, description="Metrics export.")
    serve: ServeHTTP = Field(default_factory=ServeHTTP, description="Serve HTTP proxy.")
    autoscaler: Autoscaler = Field(default_factory=Autoscaler, description="Autoscaling (cloud, KubeRay).")
    local: LocalOptions = Field(default_factory=LocalOptions, description="Local-cluster options.")
    tracking: Tracking = Field(default_factory=Tracking, description="Experiment tracking and model registry "
                                                                     "(MLflow): an external uri, or the server rayworks runs.")

    @model_validator(mode="after")
    def _check(self) -> "ClusterSpec":
        names = [g.name for g in self.worker_groups]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"worker group names must be unique; repeated: {sorted(dup)}")
        # provider.type=local with worker_groups: Ray's autoscaler starts them as extra raylets on this
        # machine (rayworks.cluster.multinode). Each raylet would hand out GPU 0.. as its own: no GPUs there.
        if self.provider.type == "local":
            for g in self.worker_groups:
                if g.num_gpus:
                    raise ValueError(f"worker_groups.{g.name}.num_gpus={g.num_gpus} on provider.type=local: local worker "
                                     "nodes share this machine and each would claim the same GPUs; set num_gpus: 0 "
                                     "(put GPUs on the head)")
        if self.provider.type in ("aws", "gcp"):
            for where, node in [("head", self.head)] + [(f"worker_groups.{g.name}", g) for g in self.worker_groups]:
                if not node.instance_type:
                    raise ValueError(f"{where}.instance_type is required for provider.type={self.provider.type}")
        if self.provider.type != "local" and not self.storage.is_remote and not self.storage.uri.startswith("/"):
            raise ValueError(f"storage.uri={self.storage.uri!r}: a multi-node cluster needs s3://, gs:// or an "
                             "absolute path on a shared mount")
        check_tracking(self.tracking, self.provider.type, self.runtime_env.secret_env_vars)
        if self.head.fault_tolerance == "redis" and self.provider.type == "local":
            self._check_local_redis()
        if self.head.fault_tolerance == "redis" and self.provider.type != "local" and not self.head.redis_address:
            raise ValueError(f"head.fault_tolerance=redis on provider.type={self.provider.type} needs head.redis_address "
                             "(host:port of a Redis every head restart reaches)")
        if self.auth.mode == "disabled":
            self._check_auth_disabled()
        return self

    def _check_local_redis(self) -> None:
        """A local head's Redis is one rayworks starts (rayworks.cluster.redis): its own port, on loopback."""
        if self.head.redis_address:
            raise ValueError(f"head.redis_address={self.head.redis_address!r} on provider.type=local: rayworks starts "
                             "its own redis-server on 127.0.0.1:local.redis_port; remove head.redis_address")
        taken = {"local.gcs_port": self.local.gcs_port, "local.ray_client_port": self.local.ray_client_port,
                 "local.dashboard_agent_listen_port": self.local.dashboard_agent_listen_port,
                 "dashboard.port": self.dashboard.port, "metrics.export_port": self.metrics.export_port,
                 "serve.port": self.serve.port}
        if self.serve.ha_proxy:
            taken.update({"serve.haproxy_stats_port": self.serve.haproxy_stats_port,
                          "serve.haproxy_metrics_port": self.serve.haproxy_metrics_port,
                          "serve.fallback_proxy_port": self.serve.fallback_proxy_port})
        clash = [k for k, v in taken.items() if v == self.local.redis_port]
        if clash:
            raise ValueError(f"local.redis_port={self.local.redis_port} is also {clash[0]}; give Redis a port of its own")

    def _check_auth_disabled(self) -> None:
        """auth.mode=disabled only where nothing but this machine can reach any listener.

        Without a token the GCS, the dashboard agent's job API and Ray Client run anyone's code:
        a remote cluster never qualifies; a local one only when every listener is on loopback.
        Ray binds its own ports to loopback on a local head (rayworks.cluster.local), but HAProxy's
        stats page and exporter, and Serve replica ports in HAProxy mode, always bind all interfaces.
        """
        why = "an open GCS, job API and Ray Client are remote code execution for anyone who can reach them"
        if self.provider.type != "local":
            raise ValueError(f"auth.mode=disabled on provider.type={self.provider.type}: {why}; keep auth.mode=token")
        for field, host in (("dashboard.host", self.dashboard.host), ("serve.host", self.serve.host)):
            if not is_loopback_host(host):
                raise ValueError(f"auth.mode=disabled with {field}={host!r} exposes the Jobs API "
                                 f"(remote code execution); keep auth.mode=token or bind {field} to 127.0.0.1")
        if self.serve.ha_proxy:
            raise ValueError("auth.mode=disabled with serve.ha_proxy: true: Serve's HAProxy and replica ports listen "
                             "on all interfaces; keep auth.mode=token or set serve.ha_proxy: false")

    @property
    def dashboard_url(self) -> str:
        host = "127.0.0.1" if self.dashboard.host in ("0.0.0.0", "::") else self.dashboard.host
        return f"http://{host}:{self.dashboard.port}"

    def node_types(self) -> list[tuple[str, NodeType, int]]:
        """(name, node, max count) for the head and every worker group."""
        return [("head", self.head, 1)] + [(g.name, g, g.max_workers) for g in self.worker_groups]


def default_spec_path() -> Path:
    """The spec used when none is given: the project's, else the packaged default.

    In order: ``cluster/local.yaml`` under the current folder (a checkout, or a project
    that ``rayworks init`` made); the checkout beside the package (editable installs);
    else ``$RAYWORKS_HOME/cluster/local.yaml`` (default ``~/.rayworks``), copied there from
    the packaged default on first use. The copy matters: the spec's storage is relative to
    the spec file (``../artifacts``), which beside the packaged file would be inside
    site-packages; copied, it is ``~/.rayworks/artifacts``.
    """
    here = Path.cwd() / "cluster" / "local.yaml"
    if here.is_file():
        return here
    repo = Path(__file__).resolve().parents[3] / "cluster" / "local.yaml"
    if repo.is_file():
        return repo
    import os
    import shutil

    home = Path(os.environ.get("RAYWORKS_HOME", Path.home() / ".rayworks")).expanduser()
    user = home / "cluster" / "local.yaml"
    if not user.is_file():
        user.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(packaged_default_spec(), user)
    return user


def packaged_default_spec() -> Path:
    """The default local spec shipped inside the package (the checkout's cluster/local.yaml)."""
    return Path(__file__).resolve().parents[1] / "defaults" / "local.yaml"


def load_cluster_spec(path: str | Path | None = None, overrides: list[str] | None = None) -> ClusterSpec:
    """Loads and validates a cluster spec; relative local storage paths resolve against the spec file."""
    p = Path(path) if path else default_spec_path()
    spec = load_yaml_model(ClusterSpec, p, overrides)
    if not spec.storage.is_remote:
        uri = Path(spec.storage.uri).expanduser()
        if not uri.is_absolute():
            uri = (p.resolve().parent / uri).resolve()
        spec.storage.uri = str(uri)
    return spec
