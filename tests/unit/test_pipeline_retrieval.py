"""`rayworks run` with embed and index stages: links, validation and when a stage is up to date (no Ray).

The pipeline is the shipped prep/train/embed/index configs (by path) and an inline serve stage;
the planning is the real code `rayworks run` uses (``stage_jobs``, ``stage_upstream``,
``config_hash`` and the stage records), over manifest files written here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayworks.client.pipeline import _up_to_date, stage_upstream
from rayworks.config.base import config_hash
from rayworks.config.cluster import load_cluster_spec
from rayworks.config.pipeline import STAGES, load_pipeline
from rayworks.errors import ConfigError
from rayworks.storage import sha256_bytes

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "jobs" / "configs"


def write_pipeline(tmp_path, serve_extra: str = "", embed: str | None = None, index: bool = True) -> Path:
    embed = embed if embed is not None else f"embed: {CONFIGS / 'embed.yaml'}\n"
    p = tmp_path / "pipeline.yaml"
    p.write_text(f"kind: pipeline\nname: rag\ncluster: {REPO / 'cluster' / 'local.yaml'}\n"
                 f"prep: {CONFIGS / 'prep.yaml'}\ntrain: {CONFIGS / 'train.yaml'}\n{embed}"
                 + (f"index: {CONFIGS / 'index.yaml'}\n" if index else "")
                 + "serve:\n  kind: serve\n  models:\n    - id: tiny\n      source: anywhere\n"
                   "      engine: {max_model_len: 512, dtype: float32}\n"
                   f"  auth: {{api_keys_file: {tmp_path / 'keys'}}}\n{serve_extra}")
    return p


@pytest.fixture(scope="module")
def spec():
    return load_cluster_spec(REPO / "cluster" / "local.yaml")


def test_stages_are_linked_export_to_embed_to_index_to_serve(tmp_path, spec):
    assert STAGES.index("train") < STAGES.index("embed") < STAGES.index("index") < STAGES.index("serve")
    jobs = load_pipeline(write_pipeline(tmp_path)).stage_jobs(spec)
    export = f"{spec.storage.uri}/train/{jobs['train'].name}/export"
    # The shipped embed config names the demo export; in a pipeline the stage's model is the
    # one it names (the pipeline fills in its own export only where none is named).
    assert jobs["embed"].model.endswith("artifacts/train/tiny-python-docs/export")
    assert jobs["index"].embeddings == f"{spec.storage.uri}/embed/embed-demo"
    assert jobs["serve"].retrieval.index == f"{spec.storage.uri}/index/index-demo"
    assert jobs["serve"].retrieval.top_k == 4 and jobs["serve"].models[0].source == export  # defaults, linked


def test_embed_without_a_model_embeds_with_the_training_export(tmp_path, spec):
    embed = ("embed:\n  kind: embed\n  name: docs\n  input: {path: docs.jsonl}\n"
             "  engine: {max_model_len: 256, dtype: float32}\n  chunking: {chunk_tokens: 64, overlap_tokens: 8}\n")
    pipe = load_pipeline(write_pipeline(tmp_path, serve_extra="  retrieval: {top_k: 2, index: elsewhere}\n",
                                        embed=embed))
    jobs = pipe.stage_jobs(spec)
    assert jobs["embed"].model == f"{spec.storage.uri}/train/{jobs['train'].name}/export"
    assert jobs["embed"].input.path == str(tmp_path / "docs.jsonl")  # relative to the pipeline file
    # The pipeline owns the link: whatever the stage says, the served index is the one built here.
    assert jobs["index"].embeddings == f"{spec.storage.uri}/embed/docs"  # not the shipped config's embed-demo
    assert (jobs["serve"].retrieval.index, jobs["serve"].retrieval.top_k) == (f"{spec.storage.uri}/index/index-demo", 2)


def test_an_index_stage_needs_an_embed_stage(tmp_path):
    with pytest.raises(ConfigError, match="index stage needs an embed stage"):
        load_pipeline(write_pipeline(tmp_path, embed=""))


def test_a_pipeline_without_retrieval_stages_is_unchanged(tmp_path, spec):
    jobs = load_pipeline(write_pipeline(tmp_path, embed="", index=False)).stage_jobs(spec)
    assert "embed" not in jobs and "index" not in jobs and jobs["serve"].retrieval is None
    assert stage_upstream("serve", jobs["serve"], {}, "abc", {"export": "abc"}) == "abc"  # same key as before


def test_force_accepts_the_new_stages(tmp_path):
    p = write_pipeline(tmp_path)
    assert load_pipeline(p, ["force=[embed,index]"]).force == ["embed", "index"]
    with pytest.raises(ConfigError, match="force"):
        load_pipeline(p, ["force=[indexing]"])


class Planner:
    """The up-to-date decisions of `rayworks run` (client.pipeline._run_stages) over manifests on disk:
    each "run" records what it ran; a stage is skipped when its key and its output manifest hold."""

    def __init__(self, tmp_path, jobs, links):
        self.tmp, self.jobs, self.links = tmp_path, jobs, links
        self.man = {s: tmp_path / "out" / s / "manifest.json" for s in jobs}
        for s, m in self.man.items():
            m.parent.mkdir(parents=True, exist_ok=True)
            m.write_text(json.dumps({"kind": s, "v": 0}))

    def rebuild(self, stage: str) -> None:
        """A stage's output changed (e.g. its job reran)."""
        v = json.loads(self.man[stage].read_text())["v"] + 1
        self.man[stage].write_text(json.dumps({"kind": stage, "v": v}))

    def run(self) -> list[str]:
        ran, produced, chain = [], {}, ""
        for stage, job in self.jobs.items():
            key = config_hash({"config": job.model_dump(mode="json"),
                               "upstream_sha256": stage_upstream(stage, job, self.links, chain, produced)})
            rec = self.tmp / "rec" / f"{stage}.json"
            if not _up_to_date(str(rec), key, str(self.man[stage])):
                ran.append(stage)
                self.rebuild(stage)  # the job wrote a new manifest
                rec.parent.mkdir(exist_ok=True)
                rec.write_text(json.dumps({"key": key, "manifest_sha256": sha256_bytes(self.man[stage].read_bytes())}))
            sha = sha256_bytes(self.man[stage].read_bytes())
            if stage in ("prep", "train"):
                chain = sha
                if stage == "train":
                    produced["export"] = sha
            elif stage in ("embed", "index"):
                produced[stage] = sha
        return ran


def test_up_to_date_follows_the_index_chain(tmp_path, spec):
    embed = ("embed:\n  kind: embed\n  name: docs\n  input: {path: docs.jsonl}\n"
             "  engine: {max_model_len: 256, dtype: float32}\n  chunking: {chunk_tokens: 64, overlap_tokens: 8}\n")
    pipe = load_pipeline(write_pipeline(tmp_path, embed=embed))
    jobs = pipe.stage_jobs(spec)
    links = {"export_dir": f"{spec.storage.uri}/train/{jobs['train'].name}/export"}
    plan = Planner(tmp_path, jobs, links)
    assert plan.run() == ["prep", "train", "embed", "index", "serve"]
    assert plan.run() == []  # nothing changed: every stage skipped
    plan.rebuild("index")  # the index was rebuilt: it reruns (its manifest is not the recorded one), serve redeploys
    assert plan.run() == ["index", "serve"]
    plan.rebuild("embed")  # new embeddings: a new index, a redeploy; training untouched
    assert plan.run() == ["embed", "index", "serve"]
    plan.rebuild("train")  # a new export: the embed stage embeds with it, so everything after training reruns
    assert plan.run() == ["train", "embed", "index", "serve"]


def test_embed_with_its_own_model_ignores_a_new_export(tmp_path, spec):
    embed = (f"embed:\n  kind: embed\n  name: docs\n  model: {tmp_path / 'embedder'}\n  input: {{path: d.jsonl}}\n"
             "  engine: {max_model_len: 256, dtype: float32}\n  chunking: {chunk_tokens: 64, overlap_tokens: 8}\n")
    jobs = load_pipeline(write_pipeline(tmp_path, embed=embed)).stage_jobs(spec)
    assert jobs["embed"].model == str(tmp_path / "embedder")
    plan = Planner(tmp_path, jobs, {"export_dir": f"{spec.storage.uri}/train/{jobs['train'].name}/export"})
    assert plan.run() == ["prep", "train", "embed", "index", "serve"]
    plan.rebuild("train")
    assert plan.run() == ["train", "serve"]  # the index is still the one served: no re-embedding
