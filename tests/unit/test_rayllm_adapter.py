"""Ray's internals that rayworks uses are all there, and nothing else in rayworks reaches for them."""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

from rayworks.serve import rayllm

PACKAGE = Path(rayllm.__file__).resolve().parents[1]


def test_every_internal_the_adapter_needs_is_importable():
    gone = rayllm.missing()
    assert not gone, (
        f"Ray {md.version('ray')} lacks internals rayworks.serve.rayllm was written against on Ray "
        f"{rayllm.PINNED_RAY}: {', '.join(gone)}. Pin ray=={rayllm.PINNED_RAY} or port rayllm.py to the new layout")


def test_private_attributes_of_a_bound_app():
    """``Application._bound_deployment`` is an instance attribute: check it on a real (clusterless) app."""
    from ray import serve

    @serve.deployment
    class Echo:
        def __call__(self) -> str:
            return "x"

    app = Echo.bind()
    assert hasattr(app, "_bound_deployment") and hasattr(app._bound_deployment, "options"), (
        f"ray.serve Application has no _bound_deployment.options on Ray {md.version('ray')} "
        f"(rayworks.serve.rayllm was written against {rayllm.PINNED_RAY})")


def test_missing_names_what_moved(monkeypatch):
    """The check itself can fail: a symbol that is not there is reported by its full name."""
    monkeypatch.setitem(rayllm.INTERNALS, "ray.llm._internal.serve.constants", ("NO_SUCH_FLAG",))
    monkeypatch.setitem(rayllm.INTERNALS, "ray.llm._internal.no_such_module", ("x",))
    gone = rayllm.missing()
    assert "ray.llm._internal.serve.constants.NO_SUCH_FLAG" in gone
    assert "ray.llm._internal.no_such_module (module)" in gone


def test_pinned_version_is_the_installed_one():
    assert md.version("ray") == rayllm.PINNED_RAY, (
        f"installed Ray {md.version('ray')} is not the version rayworks.serve.rayllm pins ({rayllm.PINNED_RAY}): "
        "run this test file, then update PINNED_RAY")


def test_only_the_adapter_touches_ray_internals():
    """One door: no other module of the package imports ray.llm._internal or calls serve._run."""
    pattern = re.compile(r"ray\.llm\._internal|serve\._run\b|_bound_deployment|_with_ingress_request_router")
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if p.name != "rayllm.py" and pattern.search(p.read_text())]
    assert not offenders, f"Ray internals used outside rayworks/serve/rayllm.py: {offenders}"


def test_router_keeps_its_version_when_only_the_engine_changes():
    """An update to a new model or index must not restart Ray's request router (HAProxy would 503
    router_unreachable until its next reload); new router options must."""
    from ray.serve.llm import LLMConfig

    def router_version(source: str, options: dict):
        cfg = LLMConfig(model_loading_config={"model_id": "m", "model_source": source},
                        deployment_config={"max_surge_percent": 100}, experimental_configs={"index": source})
        app = rayllm.direct_streaming_deployment(cfg, options)
        return app._ingress_request_router._bound_deployment.version, app._bound_deployment.version

    old, new = router_version("/models/a", {"max_surge_percent": 100}), router_version("/models/b", {"max_surge_percent": 100})
    assert old[0] and old[0] == new[0]
    assert old[1] is None  # the engine itself still rolls on every update
    assert router_version("/models/a", {"max_surge_percent": 50})[0] != old[0]


def test_missing_names_a_private_argument_that_is_gone(monkeypatch):
    monkeypatch.setattr(rayllm, "PRIVATE_ARGS", (("ray.serve.deployment", "Deployment", "options", "_no_such_arg"),))
    assert "ray.serve.deployment.Deployment.options(_no_such_arg=)" in rayllm.missing()


def test_engine_keeps_its_version_through_an_update_that_changes_nothing_it_runs():
    """An update that attaches another index or scales keeps the running engines (Serve applies
    the replica count in place); a new model, a changed setting or key, restarts them."""
    from ray.serve.llm import LLMConfig

    def cfg(replicas=1, max_model_len=256, key_sha="k1", rag_k=3):
        return LLMConfig(model_loading_config={"model_id": "m", "model_source": "/exports/m"},
                         engine_kwargs={"max_model_len": max_model_len},
                         deployment_config={"max_surge_percent": 100, "graceful_shutdown_timeout_s": 30,
                                            "autoscaling_config": {"min_replicas": replicas, "max_replicas": replicas}},
                         experimental_configs={"rayworks_gate": {"api_key_sha256": [key_sha]},
                                               "rayworks_retrieval": {"top_k": rag_k}})

    inputs = {"model_sha256": "a" * 64, "keys_file_sha256": None}
    base = rayllm.engine_version(cfg(), inputs)
    assert base and base.startswith("rw-engine-")
    assert rayllm.engine_version(cfg(), dict(inputs)) == base  # the same model and config: kept
    assert rayllm.engine_version(cfg(replicas=3), inputs) == base  # scaling: applied in place
    for other in (rayllm.engine_version(cfg(), {**inputs, "model_sha256": "b" * 64}),  # new weights, same path
                  rayllm.engine_version(cfg(), {**inputs, "keys_file_sha256": "c" * 64}),  # key file rotated
                  rayllm.engine_version(cfg(key_sha="k2"), inputs),  # key in the env rotated
                  rayllm.engine_version(cfg(max_model_len=512), inputs),
                  rayllm.engine_version(cfg(rag_k=5), inputs)):
        assert other and other != base
    # The replicas get the package from py_modules, not the job's working_dir (its staged config,
    # new with each submission, which would change their runtime env and so restart them).
    from rayworks.serve.job import replica_code_env

    env = {"working_dir": "gcs://_ray_pkg_job1.zip", "py_modules": ["gcs://_ray_pkg_rayworks.zip"]}
    assert replica_code_env(env) == {"py_modules": ["gcs://_ray_pkg_rayworks.zip"], "working_dir": None}
    assert replica_code_env({"working_dir": "gcs://_ray_pkg_checkout.zip"}) == {"working_dir": "gcs://_ray_pkg_checkout.zip"}
    assert replica_code_env({}) == {}
    # A model folder rayworks did not export has no manifest to hash: no version, restarts every time.
    assert rayllm.engine_version(cfg(), {"model_sha256": None}) is None
    assert rayllm.engine_version(cfg(), None) is None
    app = rayllm.direct_streaming_deployment(cfg(), {"max_surge_percent": 100}, None, inputs)
    assert app._bound_deployment.version == base and rayllm.engine_versions(app) == {"m": base}
    ingress = rayllm.ingress_deployment([cfg()], rayllm.ingress_fastapi_app(), {}, None, {"m": inputs})
    assert rayllm.engine_versions(ingress) == {"m": base}
