"""The eval job's config: strict, every part checked at load time; the shipped config and task data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from rayworks.config.jobs import KINDS, load_job, load_job_data
from rayworks.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def job(**kw) -> dict:
    return {"kind": "eval", "name": "e", "model": "m", **kw}


def load(d: dict):
    return load_job_data(d, "test.yaml", Path("/base"))


def test_eval_is_a_registered_kind_and_the_shipped_config_loads():
    assert KINDS["eval"].entrypoint == "jobs/eval.py" and (REPO / "jobs" / "eval.py").is_file()
    j = load_job(REPO / "jobs" / "configs" / "eval.yaml")
    assert j.kind == "eval" and j.harness.include_path == str(REPO / "jobs" / "configs" / "eval_tasks")
    assert j.gate.max_val_loss_regression == 0.05 and j.perplexity.split == "val"


def test_relative_paths_resolve_against_the_config_file():
    j = load(job(compare_to="old", perplexity={"prep_uri": "p", "jsonl": ["a.jsonl", "s3://b/c.jsonl"]},
                 harness={"include_path": "tasks", "tasks": ["t"], "backend": "endpoint",
                          "endpoint": {"base_url": "http://127.0.0.1:8000", "model_id": "x", "api_key_file": "k"}}))
    assert (j.model, j.compare_to, j.perplexity.prep_uri) == ("/base/m", "/base/old", "/base/p")
    assert j.perplexity.jsonl == ["/base/a.jsonl", "s3://b/c.jsonl"]
    assert j.harness.include_path == "/base/tasks" and j.harness.endpoint.api_key_file == "/base/k"


@pytest.mark.parametrize("data,msg", [
    (job(), "give perplexity and/or harness"),
    (job(perplexity={}), "give prep_uri"),
    (job(harness={"include_path": "t", "tasks": []}), "tasks"),
    (job(harness={"include_path": "t", "tasks": ["a"], "backend": "endpoint"}), "give harness.endpoint"),
    (job(harness={"include_path": "t", "tasks": ["a"], "endpoint": {"base_url": "u", "model_id": "m"}}),
     "only used with backend: endpoint"),
    (job(perplexity={"prep_uri": "p"}, gate={"min_accuracy": {"a": 0.5}}), "needs a harness"),
    (job(harness={"include_path": "t", "tasks": ["a"]}, gate={"max_val_loss_regression": 0.1}), "needs a perplexity"),
    (job(harness={"include_path": "t", "tasks": ["a"]}, gate={"min_accuracy": {"b": 0.5}}), "not in harness.tasks"),
    (job(harness={"include_path": "t", "tasks": ["a"]}, gate={"min_accuracy": {"a": 50}}), "fractions in [0, 1]"),
    (job(perplexity={"prep_uri": "p"}, gate={"max_val_loss_regression": -1}), "max_val_loss_regression"),
    (job(perplexity={"prep_uri": "p", "bogus": 1}), "bogus"),
    (job(harness={"include_path": "t", "tasks": ["a"], "backend": "openai"}), "backend"),
])
def test_bad_configs_fail_at_load_with_the_field(data, msg):
    with pytest.raises(ConfigError, match=None) as e:
        load(data)
    assert msg in str(e.value), str(e.value)


def test_resources_count_the_perplexity_actors():
    j = load(job(perplexity={"prep_uri": "p", "num_actors": 3, "num_cpus_per_actor": 2}))
    (driver, actors) = j.resource_request()
    assert (driver.num_cpus, actors.num_cpus, actors.count, actors.num_gpus) == (1, 2, 3, 0)


def test_shipped_task_data_is_what_the_build_script_makes():
    script = REPO / "jobs" / "configs" / "eval_tasks" / "build_tasks.py"
    proc = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, "facts.jsonl is stale: run python jobs/configs/eval_tasks/build_tasks.py"


def test_shipped_facts_make_chance_exactly_one_in_eight():
    import json
    from collections import Counter

    rows = [json.loads(ln) for ln in (REPO / "jobs/configs/eval_tasks/facts.jsonl").read_text().splitlines()]
    assert len({r["name"] for r in rows}) == len(rows) == 48
    assert set(Counter(r["gold"] for r in rows).values()) == {6}
    assert all(r["choices"][r["gold"]] == r["answer"] and r["text"] == f"{r['query']} {r['answer']}." for r in rows)


def test_pipeline_eval_stage_is_linked_to_the_new_export_the_prep_output_and_the_served_model():
    from rayworks.config.pipeline import STAGES

    assert STAGES.index("train") < STAGES.index("eval") < STAGES.index("serve")
    pipe = load({"kind": "pipeline", "name": "p",
                 "prep": {"kind": "prep", "name": "p-prep", "inputs": [{"path": "c.jsonl"}]},
                 "train": {"kind": "train", "name": "p-train"},
                 "eval": {"kind": "eval", "model": "ignored", "perplexity": {"split": "val"},
                          "gate": {"max_val_loss_regression": 0.0}}})
    ev = pipe.stage_job("eval", {"prep_output": "/s/prep/p-prep", "export_dir": "/s/train/p-train/export",
                                 "serving_source": "/s/train/old/export"})
    assert (ev.name, ev.model, ev.compare_to) == ("p-eval", "/s/train/p-train/export", "/s/train/old/export")
    assert ev.perplexity.prep_uri == "/s/prep/p-prep"
    first = pipe.stage_job("eval", {"prep_output": "/s/prep/p-prep", "export_dir": "/s/train/p-train/export"})
    assert first.compare_to is None  # nothing serving yet


def test_preflight_names_what_is_missing(tmp_path):
    from rayworks.eval.preflight import check_paths

    model = tmp_path / "m"
    model.mkdir()
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    j = load(job(model=str(model), harness={"include_path": str(tasks), "tasks": ["t"]}))
    with pytest.raises(ConfigError, match="no config.json"):
        check_paths(j)
    (model / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="holds no task YAML"):
        check_paths(j)
    (tasks / "t.yaml").write_text("task: t\n")
    check_paths(j)
    j = load(job(model=str(model), perplexity={"prep_uri": str(tmp_path / "nope")}))
    with pytest.raises(ConfigError, match="has no manifest.json"):
        check_paths(j)
