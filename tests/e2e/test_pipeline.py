"""The main job end to end: `rayworks run` takes text to a served model on a local cluster.

A reduced pipeline (small corpus, a few dozen training steps) runs through the real CLI:
three Ray jobs, one completion over HTTP, the lineage chain from the served model back
to the input files; a rerun skips every stage; a changed training setting reruns
train and serve but not prep.
"""

from __future__ import annotations

import json
import re

import pytest
import requests
import yaml

MODEL_ID = "e2e-tiny"


def _pipeline(tmp_path, local_cluster) -> str:
    keys = tmp_path / "keys"
    cfg = {
        "kind": "pipeline", "name": "e2e", "cluster": str(local_cluster.spec_path),
        "corpus": {"source": "python-docs", "output": str(tmp_path / "corpus"), "size_mb": 1.5},
        "prep": {"kind": "prep", "name": "e2e-prep",
                 "inputs": [{"path": str(tmp_path / "corpus" / "*.jsonl"), "format": "jsonl"}],
                 "tokenizer": {"vocab_size": 512, "sample_mb": 1}, "seq_len": 64, "val_fraction": 0.05,
                 "unit_mb": 1, "execution": {"num_workers": 2}},
        "train": {"kind": "train", "name": "e2e-train", "model": {"preset": "tiny"},
                  "data": {"num_val_sequences": 32},
                  "deepspeed": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4,
                                "gradient_accumulation_steps": 1,
                                "optimizer": {"type": "AdamW", "params": {"lr": 0.003}},
                                "zero_optimization": {"stage": 2}},
                  "scaling": {"num_workers": 2},
                  "run": {"num_steps": 24, "log_every_steps": 8, "eval_every_steps": 12,
                          "checkpoint_every_steps": 12}},
        "serve": {"kind": "serve", "name": "e2e-serve",
                  "models": [{"id": MODEL_ID, "accelerator": "cpu",
                              "engine": {"max_model_len": 256, "dtype": "float32", "cpu_kv_cache_gb": 1,
                                         "enforce_eager": True}}],
                  "http": {"route_prefix": "/e2e"},
                  "auth": {"api_keys_file": str(keys)}},
        "smoke_test": {"prompt": "def ", "max_tokens": 8},
    }
    p = tmp_path / "pipeline.yaml"
    p.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(p)


def _stages(out: str) -> dict[str, str]:
    return dict(re.findall(r"^\s+(prep|train|serve)\s+(ran|skipped)\s", out, re.M))


@pytest.fixture
def cleanup_app(ray_on_cluster):
    yield
    from ray import serve

    serve.delete("e2e-serve")  # free the replica's CPUs for the next modules


def test_pipeline_end_to_end(local_cluster, tmp_path, cleanup_app):
    pipe = _pipeline(tmp_path, local_cluster)
    first = local_cluster.rayworks("run", pipe, "--quiet", timeout=1500)
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert _stages(first.stdout) == {"prep": "ran", "train": "ran", "serve": "ran"}, first.stdout[-3000:]
    assert "smoke test: 'def ' ->" in first.stdout and "curl " in first.stdout

    # The served model answers over HTTP with the key (and refuses without it).
    key = (tmp_path / "keys").read_text().split()[0]
    assert key not in first.stdout + first.stderr  # the key is never printed
    url = f"http://127.0.0.1:{local_cluster.serve_port}/e2e/v1/completions"
    body = {"model": MODEL_ID, "prompt": "import ", "max_tokens": 5, "temperature": 0}
    r = requests.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
    assert requests.post(url, json=body, timeout=30).status_code == 401

    # Lineage: served model -> serve manifest -> export -> training run -> prep -> input files.
    lin = local_cluster.rayworks("lineage", MODEL_ID, "--cluster", str(local_cluster.spec_path), "--json")
    assert lin.returncode == 0, lin.stdout[-3000:] + lin.stderr[-2000:]
    nodes = json.loads(lin.stdout)
    kinds = [n["kind"] for n in nodes]
    for k in ("serve", "export", "prep", "file"):
        assert k in kinds, kinds
    assert kinds.index("serve") < kinds.index("export") < kinds.index("prep") < kinds.index("file")
    assert all(n["status"] == "ok" for n in nodes), nodes
    assert any(n["kind"] == "file" and n["path"].endswith(".jsonl") for n in nodes)

    # Same pipeline again: every stage skipped.
    second = local_cluster.rayworks("run", pipe, "--quiet", timeout=900)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert _stages(second.stdout) == {"prep": "skipped", "train": "skipped", "serve": "skipped"}, second.stdout

    # One training setting changed: prep skipped, train and serve rerun.
    third = local_cluster.rayworks("run", pipe, "--quiet", "--set", "train.run.num_steps=28", timeout=1500)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert _stages(third.stdout) == {"prep": "skipped", "train": "ran", "serve": "ran"}, third.stdout
    exp = json.loads((local_cluster.storage / "train" / "e2e-train" / "export" / "rayworks_export.json").read_text())
    assert exp["step"] == 28
