"""The Serve application: Ray Serve LLM's OpenAI app with the rayworks gate in front.

`build_app(args)` is the ``import_path`` of every route (the Ray job, `serve deploy`,
KubeRay's RayService): ``args`` is what :func:`rayworks.serve.render.app_args` makes
from a serve job. It reuses Ray's own pieces, the LLM deployments
(`build_llm_deployment`), model cards and the OpenAI ingress class with its FastAPI
app and middleware, and adds one ASGI middleware, :class:`rayworks.serve.gate.Gate`,
as the outermost layer of that app (auth before anything else runs). Ray's private
pieces are reached only through :mod:`rayworks.serve.rayllm`.

With ``direct_streaming`` (one model, HA proxy on), Ray serves vLLM's own HTTP app
from the engine replica; :class:`GatedLLMServer` adds the same gate to that app.
"""

from __future__ import annotations

from typing import Any

from ray.serve.llm import LLMServer

GATE_KEY = "rayworks_gate"
RAG_KEY = "rayworks_retrieval"  # experimental_configs key: the retrieval middleware's settings


def _gate_kwargs(args: dict) -> dict:
    auth = args.get("auth") or {}
    return {"api_keys_env": auth.get("api_keys_env"), "api_keys_file": auth.get("api_keys_file"),
            "api_key_sha256": auth.get("api_key_sha256"), "models": dict(args["models"]),
            "run": args.get("run", "serve")}


class GatedLLMServer(LLMServer):
    """Ray's LLMServer whose direct-streaming ASGI app (vLLM's own) sits behind the gate.

    It also answers ``/health`` like the ingress path does (status and model ids), after
    asking the engine, so clients and probes see one API whichever path serves them.
    """

    async def __init__(self, llm_config, *, retriever=None, **kwargs):
        self._rayworks_retriever = retriever  # the app's Retriever deployment, when an index is attached
        await super().__init__(llm_config, **kwargs)

    async def __serve_build_asgi_app__(self):
        from starlette.routing import Route

        from rayworks.serve import rayllm
        from rayworks.serve.gate import Gate

        app = await super().__serve_build_asgi_app__()
        gate = rayllm.llm_config_of(self).experimental_configs.get(GATE_KEY) or {}
        models = sorted(gate.get("models") or [])

        async def health(request):
            from starlette.responses import JSONResponse

            try:
                await self.check_health()
            except Exception as exc:  # noqa: BLE001 - any engine failure is "unhealthy"
                return JSONResponse({"status": "unhealthy", "error": str(exc)[:300]}, status_code=503)
            return JSONResponse({"status": "ok", "models": models})

        # vLLM's app has its own /health (empty body); ours goes first so both paths answer alike.
        app.router.routes.insert(0, Route("/health", health, methods=["GET"]))
        rag = rayllm.llm_config_of(self).experimental_configs.get(RAG_KEY)
        if rag and self._rayworks_retriever is not None:
            from rayworks.serve.retrieval import RetrievalMiddleware

            rayllm.add_middleware_to_built_app(app, RetrievalMiddleware, handle=self._rayworks_retriever, **rag)
        # Outermost: every route vLLM registered (and any it adds later) is behind the key.
        rayllm.add_middleware_to_built_app(app, Gate, **gate)
        return app


def gated_llm_config(cfg, gate_kwargs: dict):
    """Direct streaming: the LLMConfig whose replicas run :class:`GatedLLMServer` with these gate settings."""
    cfg.server_cls = GatedLLMServer
    cfg.experimental_configs = {**cfg.experimental_configs, GATE_KEY: gate_kwargs}
    return cfg


def ingress_app(gate_kwargs: dict, rag: dict | None = None):
    """Ray's OpenAI FastAPI app (its middleware, metrics) with the gate outermost and /health.

    Ray's OpenAI routes are registered on it by :func:`rayworks.serve.rayllm.ingress_class`.
    """
    from rayworks.serve import rayllm
    from rayworks.serve.gate import Gate

    app = rayllm.ingress_fastapi_app()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": sorted(gate_kwargs["models"])}

    if rag:
        from rayworks.serve.retrieval import RetrievalMiddleware, retriever_handle

        app.add_middleware(RetrievalMiddleware, handle=retriever_handle, **rag)
    # Added last, so it runs first: a refused request never reaches Ray's handlers.
    app.add_middleware(Gate, **gate_kwargs)
    return app


def build_app(args: dict):
    """Builds the Serve application from render.app_args() output.

    Args:
        args: ``llm_configs`` (LLMConfig dicts), ``models`` (id -> max_model_len),
            ``auth`` (api_keys_env / api_keys_file), ``run``, ``direct_streaming``,
            ``ingress`` (Serve deployment options for the ingress), ``engine_inputs`` (model id ->
            the sha256 of what its replicas read at start; optional).

    Returns:
        The bound Serve application.
    """
    from ray.serve.llm import LLMConfig

    from rayworks.serve import rayllm

    gate = _gate_kwargs(args)
    configs = [LLMConfig.model_validate(c) for c in args["llm_configs"]]
    # What each model's replicas read at start (the serve job fills it in; absent from a rendered
    # Serve config): engines keep running through an update that changes none of it (rayllm.engine_version).
    inputs = args.get("engine_inputs") or {}
    bind, rag = {}, None
    if args.get("retrieval"):
        from rayworks.serve.retrieval import middleware_settings, retriever_app

        bind, rag = {"retriever": retriever_app(args["retrieval"])}, middleware_settings(args["retrieval"])
    if args.get("direct_streaming"):
        # Ray Serve LLM reads the flag when it is imported: the env var alone is not enough.
        if not rayllm.direct_streaming_enabled():
            raise RuntimeError("direct_streaming needs RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1 in the environment "
                               "before Ray Serve LLM is imported where the app is built")
        cfg = gated_llm_config(configs[0], gate)
        if rag:
            cfg.experimental_configs = {**cfg.experimental_configs, RAG_KEY: rag}
        # Ray's router (HAProxy asks it which replica) keeps a version (rayllm.router_version), so an
        # update of the engine leaves it running; when its own options change it rolls with the
        # engine's surge, the new replica up before the old one stops.
        return rayllm.direct_streaming_deployment(cfg, {
            "max_surge_percent": cfg.deployment_config["max_surge_percent"],
            "graceful_shutdown_timeout_s": cfg.deployment_config["graceful_shutdown_timeout_s"]}, bind or None,
            inputs.get(cfg.model_id))
    return rayllm.ingress_deployment(configs, ingress_app(gate, rag), args.get("ingress") or {}, bind or None, inputs)
