"""The Serve application: Ray Serve LLM's OpenAI app with the rayworks gate in front.

`build_app(args)` is the ``import_path`` of every route (the Ray job, `serve deploy`,
KubeRay's RayService): ``args`` is what :func:`rayworks.serve.render.app_args` makes
from a serve job. It reuses Ray's own pieces, the LLM deployments
(`build_llm_deployment`), model cards and the OpenAI ingress class with its FastAPI
app and middleware, and adds one ASGI middleware, :class:`rayworks.serve.gate.Gate`,
as the outermost layer of that app (auth before anything else runs).

With ``direct_streaming`` (one model, HA proxy on), Ray serves vLLM's own HTTP app
from the engine replica; :class:`GatedLLMServer` adds the same gate to that app.
"""

from __future__ import annotations

from typing import Any

from ray.serve.llm import LLMServer

GATE_KEY = "rayworks_gate"


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

    async def __serve_build_asgi_app__(self):
        from ray.llm._internal.serve.core.server.llm_server import _add_middleware_to_built_app
        from starlette.routing import Route

        from rayworks.serve.gate import Gate

        app = await super().__serve_build_asgi_app__()
        gate = self._llm_config.experimental_configs.get(GATE_KEY) or {}
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
        _add_middleware_to_built_app(app, Gate, **gate)
        return app


def _ingress_app(gate_kwargs: dict):
    """Ray's OpenAI FastAPI app (its middleware, metrics) with the gate outermost and /health."""
    from ray.llm._internal.serve.core.ingress.ingress import init

    from rayworks.serve.gate import Gate

    app = init()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": sorted(gate_kwargs["models"])}

    # Added last, so it runs first: a refused request never reaches Ray's handlers.
    app.add_middleware(Gate, **gate_kwargs)
    return app


def build_app(args: dict):
    """Builds the Serve application from render.app_args() output.

    Args:
        args: ``llm_configs`` (LLMConfig dicts), ``models`` (id -> max_model_len),
            ``auth`` (api_keys_env / api_keys_file), ``run``, ``direct_streaming``,
            ``ingress`` (Serve deployment options for the ingress).

    Returns:
        The bound Serve application.
    """
    from ray import serve
    from ray.llm._internal.common.dict_utils import maybe_apply_llm_deployment_config_defaults
    from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
    from ray.llm._internal.serve.core.ingress.ingress import OpenAiIngress, make_fastapi_ingress
    from ray.serve.llm import LLMConfig, build_llm_deployment

    gate = _gate_kwargs(args)
    configs = [LLMConfig.model_validate(c) for c in args["llm_configs"]]
    if args.get("direct_streaming"):
        from ray.llm._internal.serve import constants

        # Ray Serve LLM reads the flag when it is imported: the env var alone is not enough.
        if not constants.RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING:
            raise RuntimeError("direct_streaming needs RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1 in the environment "
                               "before Ray Serve LLM is imported where the app is built")
        from ray.llm._internal.serve.core.ingress.builder import (
            _build_direct_streaming_llm_deployment, _build_openai_ingress_request_router)

        cfg = configs[0]
        cfg.server_cls = GatedLLMServer
        cfg.experimental_configs = {**cfg.experimental_configs, GATE_KEY: gate}
        # What build_openai_app does for direct streaming, with our own router options below.
        app = _build_direct_streaming_llm_deployment(cfg)  # the engine deployment is the ingress
        # Ray's router (HAProxy asks it which replica) is redeployed with every update; by default
        # its old replica stops before the new one runs, and HAProxy answers 503 in between. Give it
        # the engine's surge, so a rollout drops nothing.
        router = _build_openai_ingress_request_router(server=app, llm_config=cfg)
        router._bound_deployment = router._bound_deployment.options(
            max_surge_percent=cfg.deployment_config["max_surge_percent"],
            graceful_shutdown_timeout_s=cfg.deployment_config["graceful_shutdown_timeout_s"])
        return app._with_ingress_request_router(router)

    deployments = {c.model_id: build_llm_deployment(c) for c in configs}
    cards = {c.model_id: to_model_metadata(c.model_id, c) for c in configs}
    options = maybe_apply_llm_deployment_config_defaults(
        OpenAiIngress.get_deployment_options(configs), dict(args.get("ingress") or {}))
    ingress_cls = make_fastapi_ingress(OpenAiIngress, app=_ingress_app(gate))
    return serve.deployment(ingress_cls, **options).bind(llm_deployments=deployments, model_cards=cards)
