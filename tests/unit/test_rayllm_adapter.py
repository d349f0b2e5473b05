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
