"""The one door to Ray's internals: every ``ray.llm._internal`` import and private Serve attribute.

rayworks builds its Serve app from Ray Serve LLM's own pieces (the OpenAI ingress and its
FastAPI app, direct streaming's engine deployment and request router), and Ray exposes only
some of them publicly. Everything private that rayworks touches is named here and nowhere
else, so a Ray upgrade that moves them breaks one module, and
``tests/unit/test_rayllm_adapter.py`` (which imports every entry of :data:`INTERNALS`) says
which symbol moved and which Ray version rayworks was written against.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

# The Ray version these internals were read from (pyproject pins ray to it).
PINNED_RAY = "2.60.0"

# module -> names rayworks uses from it; attributes are checked by the adapter test.
INTERNALS: dict[str, tuple[str, ...]] = {
    "ray.llm._internal.serve.constants": ("RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING",),
    "ray.llm._internal.serve.core.server.llm_server": ("_add_middleware_to_built_app",),
    "ray.llm._internal.serve.core.ingress.ingress": ("init", "OpenAiIngress", "make_fastapi_ingress"),
    "ray.llm._internal.serve.core.ingress.builder": ("_build_direct_streaming_llm_deployment",
                                                     "_build_openai_ingress_request_router"),
    "ray.llm._internal.serve.core.configs.openai_api_models": ("to_model_metadata",),
    "ray.llm._internal.common.dict_utils": ("maybe_apply_llm_deployment_config_defaults",),
    "ray.serve": ("_run",),
    # Test only: tests/unit/test_serve_routes.py builds the engine replica's app without an engine.
    "ray.llm._internal.serve.engines.vllm.vllm_engine": ("VLLMEngine",),
}
# Private members of public classes: (module, class, attribute).
PRIVATE_MEMBERS: tuple[tuple[str, str, str], ...] = (
    ("ray.serve.llm", "LLMServer", "__serve_build_asgi_app__"),  # Serve's hook for a replica's own ASGI app
    ("ray.serve.deployment", "Application", "_with_ingress_request_router"),
)
# Private keyword arguments of public methods: (module, class, method, argument).
PRIVATE_ARGS: tuple[tuple[str, str, str, str], ...] = (
    ("ray.serve.deployment", "Deployment", "options", "_internal"),  # lets a deployment keep a version
)


def _get(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def missing() -> list[str]:
    """Every internal rayworks needs that this Ray lacks, as 'module.name' (empty when all are there)."""
    out = []
    for module, names in INTERNALS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError:
            out.append(f"{module} (module)")
            continue
        out += [f"{module}.{n}" for n in names if not hasattr(mod, n)]
    for module, cls, attr in PRIVATE_MEMBERS:
        try:
            if not hasattr(_get(module, cls), attr):
                out.append(f"{module}.{cls}.{attr}")
        except (ImportError, AttributeError):
            out.append(f"{module}.{cls}")
    for module, cls, method, arg in PRIVATE_ARGS:
        try:
            if arg not in inspect.signature(getattr(_get(module, cls), method)).parameters:
                out.append(f"{module}.{cls}.{method}({arg}=)")
        except (ImportError, AttributeError):
            out.append(f"{module}.{cls}.{method}")
    return out


def direct_streaming_enabled() -> bool:
    """Whether Ray Serve LLM was imported with RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1 (it reads it once)."""
    return bool(_get("ray.llm._internal.serve.constants", "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"))


def add_middleware_to_built_app(app, middleware_cls, **options) -> None:
    """Adds an ASGI middleware (outermost) to an app whose middleware stack vLLM already built."""
    _get("ray.llm._internal.serve.core.server.llm_server", "_add_middleware_to_built_app")(
        app, middleware_cls, **options)


def llm_config_of(server) -> Any:
    """The LLMConfig an LLMServer replica was built with."""
    return server._llm_config


def vllm_engine_class():
    """Ray's vLLM engine class (what an LLMServer replica runs unless told otherwise)."""
    return _get("ray.llm._internal.serve.engines.vllm.vllm_engine", "VLLMEngine")


def ingress_fastapi_app():
    """Ray Serve LLM's OpenAI FastAPI app with its own middleware (errors, CORS, metrics, request id)."""
    return _get("ray.llm._internal.serve.core.ingress.ingress", "init")()


def ingress_class(app):
    """Ray's OpenAiIngress with its OpenAI routes registered on ``app`` (a Serve ingress class)."""
    ingress = importlib.import_module("ray.llm._internal.serve.core.ingress.ingress")
    return ingress.make_fastapi_ingress(ingress.OpenAiIngress, app=app)


def ingress_deployment(configs: list, app, ingress_options: dict, extra_bind: dict | None = None,
                       inputs: dict | None = None):
    """The bound OpenAI ingress app: one LLM deployment per config behind ``app``'s routes.

    ``extra_bind``: further deployments (e.g. the retriever) bound into the app graph; the
    ingress accepts and ignores them (its middleware reaches them by name). ``inputs``: model
    id -> what its replicas read at start (:func:`engine_version`)."""
    from ray import serve
    from ray.serve.llm import build_llm_deployment

    ingress = importlib.import_module("ray.llm._internal.serve.core.ingress.ingress")
    to_card = _get("ray.llm._internal.serve.core.configs.openai_api_models", "to_model_metadata")
    defaults = _get("ray.llm._internal.common.dict_utils", "maybe_apply_llm_deployment_config_defaults")
    deployments = {c.model_id: with_version(build_llm_deployment(c), engine_version(c, (inputs or {}).get(c.model_id)))
                   for c in configs}
    cards = {c.model_id: to_card(c.model_id, c) for c in configs}
    options = defaults(ingress.OpenAiIngress.get_deployment_options(configs), dict(ingress_options))
    cls = ingress_class(app)
    if extra_bind:
        cls = _accepting(cls, set(extra_bind))
    return serve.deployment(cls, **options).bind(llm_deployments=deployments, model_cards=cards, **(extra_bind or {}))


def _accepting(cls, names: set[str]):
    """A subclass of an ingress class whose constructor also takes (and drops) ``names`` keyword args."""

    async def __init__(self, *args, **kwargs):  # Serve's ingress classes construct asynchronously
        for n in names:
            kwargs.pop(n, None)
        await cls.__init__(self, *args, **kwargs)

    return type(cls.__name__, (cls,), {"__init__": __init__})


def direct_streaming_deployment(cfg, router_options: dict, bind_kwargs: dict | None = None,
                                inputs: dict | None = None):
    """What ``build_openai_app`` does for direct streaming, with options for Ray's request router.

    The engine deployment is the ingress (it serves vLLM's app); the router is the deployment
    HAProxy asks which replica to use. ``inputs``: what the engine replicas read at start
    (:func:`engine_version`).
    """
    builder = importlib.import_module("ray.llm._internal.serve.core.ingress.builder")
    app = with_version(builder._build_direct_streaming_llm_deployment(cfg, bind_kwargs=bind_kwargs),
                       engine_version(cfg, inputs))
    router = builder._build_openai_ingress_request_router(server=app, llm_config=cfg)
    # Serve redeploys a deployment without a version on every update, and HAProxy's Lua keeps
    # asking the old router until its next reload: a request in that window gets 503
    # router_unreachable. The router's behaviour depends only on what this version hashes, so an
    # update that changes the engine (a new model or index) keeps the running router replicas.
    # ``Deployment.options(version=...)`` is private since Ray 2.x (``_internal=True``).
    # Ray's router runs Ray's code only: no runtime env of the job's (Serve would give it the job's,
    # whose working_dir is new with every submission, and a changed runtime env restarts it).
    opts = dict(router._bound_deployment.ray_actor_options or {})
    opts["runtime_env"] = {**(opts.get("runtime_env") or {}), "working_dir": None}
    router._bound_deployment = router._bound_deployment.options(
        _internal=True, version=router_version(cfg, router_options), ray_actor_options=opts, **router_options)
    return app._with_ingress_request_router(router)


def router_version(cfg, router_options: dict) -> str:
    """A version for Ray's request router: changes only with what the router itself runs."""
    import hashlib
    import json

    import ray

    routing = {k: v for k, v in (cfg.deployment_config or {}).items() if "router" in k}
    key = json.dumps({"ray": ray.__version__, "model": cfg.model_id, "options": router_options,
                      "routing": routing}, sort_keys=True, default=repr)
    return "rw-router-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def with_version(app, version: str | None):
    """``app`` whose deployment carries ``version`` (None: none, so Serve restarts it on every update)."""
    if version:
        app._bound_deployment = app._bound_deployment.options(_internal=True, version=version)
    return app


def engine_versions(app) -> dict[str, str | None]:
    """Model id -> the Serve version of its engine deployment, in an app built by this module."""
    dep = app._bound_deployment
    engines = dep.init_kwargs.get("llm_deployments")
    if engines:  # the OpenAI ingress, one engine deployment per model
        return {m: e._bound_deployment.version for m, e in engines.items()}
    return {dep.init_kwargs["llm_config"].model_id: dep.version}  # direct streaming: the engine is the app


def engine_version(cfg, inputs: dict | None) -> str | None:
    """A Serve version for an engine deployment, or None when it cannot be known.

    Serve keeps the running replicas of a deployment whose version is unchanged (scaling changes
    apply in place) and rolls them otherwise; without a version it rolls them on every update.
    An engine replica runs what its LLMConfig says (engine settings, runtime env, the gate's key
    digests, the retrieval middleware's settings) on the model files it loads at start, so the
    version hashes the whole config (its replica counts aside) with ``inputs``
    (``rayworks.serve.job.engine_inputs``): the sha256 of the model's export manifest (which
    lists each file's sha256), or of a local folder's file names, sizes and mtimes, and of
    anything else read at start (the API key file). Without a model hash (a remote folder
    rayworks did not export, a Hub model id) there is no version. So an update that attaches a
    new index, or scales, restarts no engine; a new model, a changed setting or a rotated key does.
    """
    if not inputs or not inputs.get("model_sha256"):
        return None
    import hashlib
    import json

    from rayworks.artifacts import versions

    conf = cfg.model_dump()
    dc = dict(conf.get("deployment_config") or {})
    for k in ("num_replicas", "autoscaling_config"):  # Serve applies these to running replicas
        dc.pop(k, None)
    conf["deployment_config"] = dc
    # The installed packages a serve manifest records (rayworks, Ray, vLLM, ...): an upgrade restarts.
    key = json.dumps({"versions": versions("serve"), "config": conf, "inputs": inputs}, sort_keys=True, default=repr)
    return "rw-engine-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def run_nonblocking(app, name: str, route_prefix: str) -> None:
    """Deploys (or updates) a Serve app and returns at once; the caller polls its status.

    ``serve.run`` waits for health itself without telling why it fails; rayworks reports
    each state change and the replicas' messages (rayworks.serve.job.wait_healthy).
    """
    from ray import serve

    serve._run(app, _blocking=False, name=name, route_prefix=route_prefix)
