"""One serve job, three routes: the Ray job, a Serve config file, a KubeRay RayService.

:func:`app_args` turns a :class:`ServeJob` into the ``args`` of
``rayworks.serve.app:build_app`` (LLMConfig dicts plus the gate's settings);
:func:`serve_app_config` wraps them into a Serve config (``serve deploy`` / KubeRay's
``serveConfigV2``). The Ray job deploys exactly these args, so all routes serve the
same thing. No key ever appears here: only the env var name or key file path.
"""

from __future__ import annotations

from typing import Any

from rayworks.config.serve import ServedModel, ServeJob

IMPORT_PATH = "rayworks.serve.app:build_app"

# Env vars that cut Ray Serve's per-request overhead; see rayworks.serve.job and the benchmark.
# Cluster-level ones (read by the Serve controller/proxy at start) are not set per app.
LLM_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}


def llm_config(m: ServedModel, job: ServeJob) -> dict[str, Any]:
    """The Ray Serve LLM ``LLMConfig`` (as a dict) of one model."""
    e = m.engine
    engine = e.vllm_kwargs(m.on_cpu)
    # On CPU vLLM sizes the KV cache from VLLM_CPU_KVCACHE_SPACE (GiB); the GPU fraction is meaningless.
    env = {**LLM_ENV, **e.vllm_env(m.on_cpu)}
    if m.on_cpu and e.tensor_parallel_size > 1:
        engine.setdefault("distributed_executor_backend", "mp")

    r = m.replicas
    deployment: dict[str, Any] = {
        "max_ongoing_requests": r.max_ongoing_requests,
        # Start replacements before stopping old replicas: no gap in capacity during a rollout.
        "max_surge_percent": job.rollout.max_surge_percent,
        "graceful_shutdown_timeout_s": job.rollout.graceful_shutdown_timeout_s,
    }
    if r.autoscaling:
        a = r.autoscaling
        deployment["autoscaling_config"] = {"min_replicas": a.min_replicas, "max_replicas": a.max_replicas,
                                            "target_ongoing_requests": a.target_ongoing_requests}
    else:
        n = r.num_replicas or 1
        deployment["autoscaling_config"] = {"min_replicas": n, "max_replicas": n,
                                            "target_ongoing_requests": r.max_ongoing_requests}

    if "://" in m.source:
        source: Any = {"bucket_uri": m.source}
    else:
        source = m.source
    cfg: dict[str, Any] = {
        "model_loading_config": {"model_id": m.id, "model_source": source},
        "engine_kwargs": engine,
        "deployment_config": deployment,
        "runtime_env": {"env_vars": env},
        "log_engine_metrics": True,
    }
    if m.on_cpu:
        # No GPU in the bundle makes Ray Serve LLM run the CPU engine (STACK.md pitfall 3).
        cfg["placement_group_config"] = {"bundles": [{"CPU": m.num_cpus_per_replica}] * e.tensor_parallel_size}
    else:
        cfg["accelerator_type"] = m.accelerator
    if job.performance.stream_batching_interval_ms is not None:
        cfg["experimental_configs"] = {"stream_batching_interval_ms": job.performance.stream_batching_interval_ms}
    return cfg


def app_args(job: ServeJob, direct_streaming: bool) -> dict[str, Any]:
    """The ``args`` of build_app for this job.

    Args:
        job: the serve job.
        direct_streaming: serve vLLM's own app from the engine replica (see
            :meth:`ServeJob.direct_streaming`); else Ray Serve LLM's OpenAI ingress.
    """
    n = job.performance.num_ingress_replicas
    configs = [llm_config(m, job) for m in job.models]
    if direct_streaming:
        for c in configs:  # the replica serves HTTP itself: it reads the flag when it builds its app
            c["runtime_env"]["env_vars"]["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"] = "1"
    return {
        "run": job.name,
        "llm_configs": configs,
        "models": {m.id: m.engine.max_model_len for m in job.models},
        "auth": {"api_keys_env": job.auth.api_keys_env, "api_keys_file": job.auth.api_keys_file},
        "direct_streaming": direct_streaming,
        # An attached index: the Retriever deployment and the /v1/retrieve + RAG middleware (serve/retrieval.py).
        **({"retrieval": {**job.retrieval.model_dump(mode="json"), "num_cpus": job.retrieval.num_cpus_per_replica,
                          "max_surge_percent": job.rollout.max_surge_percent,
                          "graceful_shutdown_timeout_s": job.rollout.graceful_shutdown_timeout_s}}
           if job.retrieval else {}),
        "ingress": {"autoscaling_config": {"min_replicas": n, "max_replicas": n},
                    "max_surge_percent": job.rollout.max_surge_percent,
                    # The ingress only routes; a fraction of a CPU leaves room for engine replicas.
                    "ray_actor_options": {"num_cpus": 0.5}},
    }


def proxy_location(spec) -> str:
    """Where Serve runs its proxies: on every node, but only on the head of a local multi-node cluster.

    There every node is on this one machine, so each node's proxy (HAProxy with its stats page and
    exporter) would bind the same ports and crash-loop; the head's proxy is the one front door and
    reaches the replicas on every node.
    """
    return "HeadOnly" if spec.provider.type == "local" and spec.worker_groups else "EveryNode"


def serve_app_config(job: ServeJob, spec=None, direct_streaming: bool | None = None) -> dict[str, Any]:
    """The Serve config (``serve deploy`` file, KubeRay ``serveConfigV2``) of a serve job.

    Args:
        job: the serve job.
        spec: its cluster spec (default: ``job.cluster_spec()``), for the HTTP host/port and
            whether its Serve runs the HA proxy (which direct streaming needs).
        direct_streaming: what the job decided on the cluster; default: decided from the spec.

    Returns:
        A dict valid against ``ray.serve.schema.ServeDeploySchema``.
    """
    spec = spec or job.cluster_spec()
    host = job.http.host or spec.serve.host
    port = job.http.port or spec.serve.port
    if direct_streaming is None:
        direct_streaming = job.direct_streaming(spec.serve.ha_proxy)
    env = dict(LLM_ENV)
    if direct_streaming:
        # Read where the app is built (Serve's build task runs in this runtime env) and in the replicas.
        env["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"] = "1"
    return {
        "proxy_location": proxy_location(spec),
        "http_options": {"host": host, "port": port},
        "applications": [{
            "name": job.serve_app_name,
            "route_prefix": job.http.route_prefix,
            "import_path": IMPORT_PATH,
            "runtime_env": {"env_vars": env},
            "args": app_args(job, direct_streaming),
        }],
    }
