"""Serve job config, rendering and rollout config handling (no Ray cluster)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rayworks.config.jobs import load_job
from rayworks.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write_job(tmp_path: Path, **over) -> Path:
    export = tmp_path / "export"
    export.mkdir(exist_ok=True)
    (export / "config.json").write_text("{}")
    (export / "model.safetensors").write_bytes(b"")
    (export / "rayworks_export.json").write_text('{"kind": "export"}')
    data = {"kind": "serve", "name": "t", "models": [{"id": "tiny", "source": "export",
            "engine": {"max_model_len": 256, "dtype": "float32", "enforce_eager": True}}],
            "auth": {"api_keys_env": "RW_TEST_KEYS"}}
    data.update(over)
    p = tmp_path / "serve.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def spec(tmp_path: Path, secret_env_vars=(), ha_proxy: bool = True):
    from rayworks.config.cluster import ClusterSpec

    return ClusterSpec.model_validate({"name": "t", "head": {"num_cpus": 8, "memory_gb": 16},
                                       "storage": {"uri": str(tmp_path / "artifacts")},
                                       "runtime_env": {"secret_env_vars": list(secret_env_vars)},
                                       "serve": {"ha_proxy": ha_proxy}})


def test_example_config_loads():
    job = load_job(REPO / "jobs/configs/serve.yaml")
    assert job.kind == "serve" and job.models[0].id == "tiny"
    assert job.auth.api_keys_file and job.models[0].source.startswith("/")


def test_relative_source_resolves_and_defaults(tmp_path):
    job = load_job(write_job(tmp_path))
    assert job.models[0].source == str(tmp_path / "export")
    assert job.models[0].replicas.max_count == 1 and job.rollout.max_surge_percent == 100


@pytest.mark.parametrize("over, needle", [
    ({"auth": {}}, "api_keys_env"),
    ({"auth": {"api_keys_env": "X", "allow_unauthenticated": True}}, "choose one"),
    ({"auth": {"api_keys_env": "not a name"}}, "auth.api_keys_env"),
    ({"models": [{"id": "a", "source": "x"}, {"id": "a", "source": "y"}]}, "unique"),
    ({"models": [{"id": "a", "source": "x", "replicas": {"num_replicas": 2, "autoscaling": {"max_replicas": 3}}}]},
     "not both"),
    ({"models": [{"id": "a", "source": "x", "replicas": {"autoscaling": {"min_replicas": 3, "max_replicas": 2}}}]},
     "min_replicas"),
    ({"models": [{"id": "a", "source": "x", "engine": {"max_model_len": 256, "typo": 1}}]}, "unknown key"),
    ({"models": [{"id": "a", "source": "x"}, {"id": "b", "source": "y"}], "performance": {"direct_streaming": True}},
     "exactly one model"),
])
def test_bad_configs_fail_with_field(tmp_path, over, needle):
    with pytest.raises(ConfigError, match=needle):
        load_job(write_job(tmp_path, **over))


def test_preflight_checks_secret_and_source(tmp_path, monkeypatch):
    from rayworks.client.preflight import preflight

    job = load_job(write_job(tmp_path))
    with pytest.raises(ConfigError, match="secret_env_vars"):
        preflight(job, spec(tmp_path))
    monkeypatch.delenv("RW_TEST_KEYS", raising=False)
    with pytest.raises(ConfigError, match="not set"):
        preflight(job, spec(tmp_path, ["RW_TEST_KEYS"]))
    monkeypatch.setenv("RW_TEST_KEYS", "k")
    preflight(job, spec(tmp_path, ["RW_TEST_KEYS"]))
    job.models[0].source = str(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no config.json"):
        preflight(job, spec(tmp_path, ["RW_TEST_KEYS"]))


def test_resource_request_counts_surge(tmp_path):
    from rayworks.client.preflight import check_resources

    job = load_job(write_job(tmp_path, models=[{"id": "a", "source": "export",
                                                "replicas": {"autoscaling": {"min_replicas": 1, "max_replicas": 3}}}]))
    b = [x for x in job.resource_request() if "replica" in x.what][0]
    assert b.count == 6 and b.num_cpus == 2  # 3 replicas + 100% surge, 1 CPU actor + 1 CPU engine each
    with pytest.raises(ConfigError, match="CPUs"):
        check_resources(job.resource_request(), spec(tmp_path))


def test_serve_config_is_valid_and_has_no_secret(tmp_path, monkeypatch):
    from ray.serve.schema import ServeDeploySchema

    from rayworks.serve.render import serve_app_config

    monkeypatch.setenv("RW_TEST_KEYS", "super-secret-value")
    job = load_job(write_job(tmp_path))
    cfg = serve_app_config(job, spec(tmp_path))
    ServeDeploySchema.model_validate(cfg)
    app = cfg["applications"][0]
    assert app["import_path"] == "rayworks.serve.app:build_app" and app["name"] == "t"
    llm = app["args"]["llm_configs"][0]
    assert llm["model_loading_config"] == {"model_id": "tiny", "model_source": str(tmp_path / "export")}
    assert llm["deployment_config"]["max_surge_percent"] == 100
    assert llm["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert llm["placement_group_config"] == {"bundles": [{"CPU": 1}]}
    assert app["args"]["auth"] == {"api_keys_env": "RW_TEST_KEYS", "api_keys_file": None}
    assert "super-secret-value" not in json.dumps(cfg)
    from ray.serve.llm import LLMConfig

    LLMConfig.model_validate(llm)  # what build_app will do with it
    # One model on a cluster with Serve's HA proxy (the default): vLLM's own app streams, gated.
    assert app["args"]["direct_streaming"] is True
    assert app["runtime_env"]["env_vars"]["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"] == "1"
    assert llm["runtime_env"]["env_vars"]["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"] == "1"


def test_direct_streaming_follows_the_cluster_and_the_model_count(tmp_path):
    from rayworks.serve.render import serve_app_config

    one = load_job(write_job(tmp_path))
    two = load_job(write_job(tmp_path, models=[{"id": "a", "source": "export"}, {"id": "b", "source": "export"}]))
    assert one.direct_streaming(ha_proxy=True) and not one.direct_streaming(ha_proxy=False)
    assert not two.direct_streaming(ha_proxy=True)  # Ray Serve LLM's ingress routes between models
    off = load_job(write_job(tmp_path, performance={"direct_streaming": False}))
    assert not off.direct_streaming(ha_proxy=True)
    app = serve_app_config(one, spec(tmp_path, ha_proxy=False))["applications"][0]
    assert app["args"]["direct_streaming"] is False
    assert "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING" not in app["runtime_env"]["env_vars"]
    assert not serve_app_config(two, spec(tmp_path))["applications"][0]["args"]["direct_streaming"]


def test_preflight_counts_the_ingress_only_when_the_app_has_one(tmp_path):
    """Streaming directly, Ray's router (0 CPU) replaces the 0.5-CPU OpenAI ingress replicas."""
    one = load_job(write_job(tmp_path, models=[{"id": "a", "source": "export"}]))
    two = load_job(write_job(tmp_path, models=[{"id": "a", "source": "export"}, {"id": "b", "source": "export"}]))

    def ingress_cpus(job, ha_proxy):
        return sum(b.num_cpus * b.count for b in job.resources_on(spec(tmp_path, ha_proxy=ha_proxy))
                   if b.what == "OpenAI ingress")

    assert ingress_cpus(one, True) == 0
    assert ingress_cpus(one, False) == 0.5 * one.performance.num_ingress_replicas > 0
    assert ingress_cpus(two, True) == 0.5 * two.performance.num_ingress_replicas > 0


def test_direct_streaming_without_ha_proxy_fails_preflight(tmp_path, monkeypatch):
    from rayworks.client.preflight import preflight

    monkeypatch.setenv("RW_TEST_KEYS", "k")
    job = load_job(write_job(tmp_path, performance={"direct_streaming": True}))
    with pytest.raises(ConfigError, match="serve.ha_proxy"):
        preflight(job, spec(tmp_path, ["RW_TEST_KEYS"], ha_proxy=False))
    preflight(job, spec(tmp_path, ["RW_TEST_KEYS"], ha_proxy=True))


def test_gpu_and_uri_sources_render(tmp_path):
    from rayworks.serve.render import llm_config

    job = load_job(write_job(tmp_path, models=[{"id": "big", "source": "s3://bucket/export", "accelerator": "H100",
                                                "engine": {"dtype": "bfloat16", "tensor_parallel_size": 2}}]))
    cfg = llm_config(job.models[0], job)
    assert cfg["accelerator_type"] == "H100" and "placement_group_config" not in cfg
    assert cfg["model_loading_config"]["model_source"] == {"bucket_uri": "s3://bucket/export"}
    assert cfg["engine_kwargs"]["gpu_memory_utilization"] == 0.9
    assert cfg["engine_kwargs"]["tensor_parallel_size"] == 2


def test_rollout_replaces_one_source(tmp_path):
    from rayworks.client.rollout import updated_job

    job = load_job(write_job(tmp_path))
    manifest = {"config": job.model_dump(mode="json")}
    new = updated_job(manifest, "tiny", str(tmp_path / "v2"))
    assert new.models[0].source == str(tmp_path / "v2") and new.name == job.name
    with pytest.raises(ConfigError, match="no model 'nope'"):
        updated_job(manifest, "nope", "x")


def test_rollout_reads_a_manifest_written_before_the_engine_rename(tmp_path):
    """A deployment made with the old engine names stays updatable (its manifest is rayworks' own output)."""
    from rayworks.client.rollout import updated_job

    job = load_job(write_job(tmp_path))
    cfg = job.model_dump(mode="json")
    eng = cfg["models"][0]["engine"]
    eng["gpu_memory_fraction"], eng["cpu_kv_cache_gb"], eng["extra"] = eng.pop("gpu_memory_utilization"), 3, {"seed": 1}
    del eng["cpu_kvcache_space_gb"], eng["engine_kwargs"]
    new = updated_job({"config": cfg}, "tiny", str(tmp_path / "v2"))
    assert new.models[0].engine.cpu_kvcache_space_gb == 3 and new.models[0].engine.engine_kwargs == {"seed": 1}


def test_cli_render_serve_target(tmp_path):
    p = write_job(tmp_path)
    out = subprocess.run([sys.executable, "-m", "rayworks.client.cli", "serve", "render", str(p), "--target", "serve"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    doc = yaml.safe_load(out.stdout)
    assert doc["applications"][0]["args"]["models"] == {"tiny": 256}


def test_build_app_wires_gate_in_front_of_rays_ingress(tmp_path, monkeypatch):
    """build_app (the import_path of every route) builds without a cluster; the gate is outermost."""
    from ray.serve.deployment import Application

    from rayworks.serve.app import build_app
    from rayworks.serve.gate import Gate
    from rayworks.serve.render import app_args

    monkeypatch.setenv("RW_TEST_KEYS", "k")
    # Ray's builder reads the caller's runtime env; without a cluster that would auto-start
    # (or join) one. This test is about the app graph only.
    import ray

    class _NoCluster:
        runtime_env: dict = {}

    monkeypatch.setattr(ray, "get_runtime_context", lambda: _NoCluster())
    args = app_args(load_job(write_job(tmp_path)), direct_streaming=False)
    app = build_app(json.loads(json.dumps(args)))  # the args survive a YAML/JSON round trip
    assert isinstance(app, Application)
    dep = app._bound_deployment
    assert dep.name == "OpenAiIngress" and dep._deployment_config.max_surge_percent == 100
    from rayworks.serve.app import _gate_kwargs, ingress_app

    fastapi_app = ingress_app(_gate_kwargs(args))
    assert fastapi_app.user_middleware[0].cls is Gate  # outermost: runs before Ray's own middleware
    assert any(getattr(r, "path", "") == "/health" for r in fastapi_app.routes)
    llm = dep.init_kwargs["llm_deployments"]["tiny"]
    assert llm._bound_deployment._deployment_config.max_surge_percent == 100


DIRECT_BUILD = """
import json, sys
import ray
from ray.serve._private.build_app import build_app as serve_build

from rayworks.config.jobs import load_job
from rayworks.serve.app import GATE_KEY, GatedLLMServer, build_app
from rayworks.serve.render import app_args

class _NoCluster:
    runtime_env = {}

ray.get_runtime_context = lambda: _NoCluster()
app = build_app(json.loads(json.dumps(app_args(load_job(sys.argv[1]), direct_streaming=True))))
dep = app._bound_deployment
llm_config = dep.init_kwargs["llm_config"]
router = app._ingress_request_router._bound_deployment
print(json.dumps({"cls": dep.func_or_class.__name__, "gated": issubclass(dep.func_or_class, GatedLLMServer),
                  "gate": llm_config.experimental_configs[GATE_KEY], "router": router.name,
                  "surge": dep._deployment_config.max_surge_percent,
                  "router_surge": router._deployment_config.max_surge_percent}))
"""


def test_build_app_direct_streaming_gates_vllms_own_app(tmp_path):
    """Direct streaming: the engine deployment is the ingress (our gated server), Ray's router in front."""
    env = {**os.environ, "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1",
           "RW_TEST_KEYS": "k"}
    out = subprocess.run([sys.executable, "-c", DIRECT_BUILD, str(write_job(tmp_path))], capture_output=True,
                         text=True, env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # The router is replaced on every update too: it must surge like the engine (else 503s mid-rollout).
    assert got["gated"] and got["surge"] == got["router_surge"] == 100 and got["router"] == "LLMRouter"
    assert got["gate"] == {"api_keys_env": "RW_TEST_KEYS", "api_keys_file": None, "api_key_sha256": None,
                           "models": {"tiny": 256}, "run": "t"}


def test_build_app_refuses_direct_streaming_without_the_flag_at_import(tmp_path, monkeypatch):
    """This process imported Ray Serve LLM without the flag: refuse, never silently serve through the ingress."""
    from rayworks.serve.app import build_app
    from rayworks.serve.render import app_args

    monkeypatch.setenv("RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING", "1")  # too late: read at import
    with pytest.raises(RuntimeError, match="RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1"):
        build_app(app_args(load_job(write_job(tmp_path)), direct_streaming=True))


@pytest.mark.parametrize("old, new", [("gpu_memory_fraction", "gpu_memory_utilization"),
                                      ("cpu_kv_cache_gb", "cpu_kvcache_space_gb"),
                                      ("kv_cache_space_gb", "cpu_kvcache_space_gb"),
                                      ("extra", "engine_kwargs")])
def test_old_engine_setting_names_are_refused_naming_the_new_one(tmp_path, old, new):
    """serve and generate share one engine-settings model, named as vLLM names its arguments."""
    from pydantic import ValidationError

    from rayworks.config.generate import EngineSpec

    value = {} if old == "extra" else 1
    with pytest.raises(ConfigError, match=f"'{old}' is now '{new}'"):
        load_job(write_job(tmp_path, models=[{"id": "a", "source": "export", "engine": {old: value}}]))
    with pytest.raises(ValidationError, match=f"'{old}' is now '{new}'"):
        EngineSpec.model_validate({old: value})


def test_serve_and_generate_render_the_same_engine_settings(tmp_path):
    """The same engine block gives the same vLLM arguments and KV-cache env in both jobs."""
    from rayworks.config.generate import EngineSpec
    from rayworks.serve.render import llm_config

    block = {"max_model_len": 128, "dtype": "float32", "cpu_kvcache_space_gb": 3, "max_num_seqs": 4,
             "engine_kwargs": {"block_size": 32}}
    job = load_job(write_job(tmp_path, models=[{"id": "a", "source": "export", "engine": block}]))
    served = llm_config(job.models[0], job)
    gen = EngineSpec.model_validate(block)
    assert served["engine_kwargs"] == gen.vllm_kwargs(on_cpu=True) == {
        "max_model_len": 128, "dtype": "float32", "tensor_parallel_size": 1, "enforce_eager": True,
        "max_num_seqs": 4, "block_size": 32}
    assert served["runtime_env"]["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "3" == gen.vllm_env(True)["VLLM_CPU_KVCACHE_SPACE"]
    gpu = EngineSpec.model_validate({**block, "device": "gpu", "gpu_memory_utilization": 0.5})
    assert gpu.vllm_kwargs(on_cpu=False)["gpu_memory_utilization"] == 0.5 and gpu.vllm_env(False) == {}


def test_engine_inputs_change_with_the_model_files_and_the_key_file(tmp_path):
    """What the serve job hashes into the engine's Serve version (rayllm.engine_version): the export's
    manifest, else a plain folder's files; the key file. A rewritten weight file changes it."""
    from rayworks.serve.job import engine_inputs

    job = load_job(write_job(tmp_path))
    first = engine_inputs(job)["tiny"]
    export = tmp_path / "export"
    want = __import__("hashlib").sha256((export / "rayworks_export.json").read_bytes()).hexdigest()
    assert first == {"model_sha256": want, "keys_file_sha256": None}
    (export / "rayworks_export.json").unlink()  # a folder rayworks did not export: its files' stats
    plain = engine_inputs(job)["tiny"]["model_sha256"]
    assert plain.startswith("files:") and engine_inputs(job)["tiny"]["model_sha256"] == plain
    st = os.stat(export / "model.safetensors")
    (export / "model.safetensors").write_bytes(b"new weights")
    os.utime(export / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert engine_inputs(job)["tiny"]["model_sha256"] not in (plain, None)
    keys = tmp_path / "keys"
    keys.write_text("k1\n")
    with_file = load_job(write_job(tmp_path, auth={"api_keys_file": str(keys)}))
    a = engine_inputs(with_file)["tiny"]["keys_file_sha256"]
    keys.write_text("k2\n")
    assert a and engine_inputs(with_file)["tiny"]["keys_file_sha256"] not in (a, None)
    # A remote folder without a manifest: nothing cheap to hash, so no version (restarts every update).
    hub = load_job(write_job(tmp_path, models=[{"id": "m", "source": "s3://bucket/model"}]))
    assert engine_inputs(hub)["m"]["model_sha256"] is None
