"""The main job end to end: `rayworks run` takes text to a served model on a local cluster.

A reduced pipeline (small corpus, a few dozen training steps: tests/conftest.py) runs
through the real CLI: three Ray jobs, one completion over HTTP, the lineage chain from the served model back
to the input files; a rerun skips every stage; a changed training setting reruns
train and serve but not prep.
"""

from __future__ import annotations

import json
import re

import pytest
import requests


def _stages(out: str) -> dict[str, str]:
    return dict(re.findall(r"^\s+(prep|train|serve)\s+(ran|skipped)\s", out, re.M))


@pytest.fixture
def cleanup_app(ray_on_cluster, pipeline_run):
    yield
    from ray import serve

    serve.delete(pipeline_run.app)  # free the replica's CPUs for the next modules


def test_pipeline_end_to_end(local_cluster, pipeline_run, cleanup_app):
    pipe, first, model_id = pipeline_run.pipe, pipeline_run.first, pipeline_run.model_id
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert _stages(first.stdout) == {"prep": "ran", "train": "ran", "serve": "ran"}, first.stdout[-3000:]
    assert "smoke test: 'def ' ->" in first.stdout and "curl " in first.stdout

    # The served model answers over HTTP with the key (and refuses without it).
    key = pipeline_run.keys.read_text().split()[0]
    assert key not in first.stdout + first.stderr  # the key is never printed
    url = f"{pipeline_run.base_url}/v1/completions"
    body = {"model": model_id, "prompt": "import ", "max_tokens": 5, "temperature": 0}
    r = requests.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1
    assert requests.post(url, json=body, timeout=30).status_code == 401

    # Lineage: served model -> serve manifest -> export -> training run -> prep -> input files.
    lin = local_cluster.rayworks("lineage", model_id, "--cluster", str(local_cluster.spec_path), "--json")
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
