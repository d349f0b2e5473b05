"""The eval job on the session cluster: a model the training job taught the shipped facts scores
~100% on the fact tasks while a random-init model of the same shape scores chance; the eval job's
loss on the prep val split equals training's last validation loss; results are deterministic;
the gate passes the trained model over the random one and refuses the reverse.

One training run (module fixture, the real train job, 1 CPU worker) over a prep output made of
the shipped facts (jobs/configs/eval_tasks/facts.jsonl, in shuffled orders) serves every test.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "jobs" / "configs" / "eval_tasks"
SEQ_LEN = 64
NUM_VAL = 16


def facts_prep(out: Path) -> Path:
    """A prep output (the prep job's format) whose text is the shipped facts, many shuffles of them."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.tinymodel import make_tokenizer

    (out / "tokenizer").mkdir(parents=True)
    tok = make_tokenizer(out / "tokenizer", 512)
    facts = [json.loads(ln)["text"] for ln in (TASKS / "facts.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    ids: list[int] = []
    for _ in range(48):
        order = facts[:]
        rng.shuffle(order)
        ids.extend(tok("\n".join(order) + "\n")["input_ids"])
    rows = np.asarray(ids[: len(ids) // SEQ_LEN * SEQ_LEN], dtype=np.int32).reshape(-1, SEQ_LEN)
    splits = {}
    for name, arr in (("val", rows[:NUM_VAL]), ("train", rows[NUM_VAL:])):
        (out / name).mkdir()
        col = pa.FixedSizeListArray.from_arrays(pa.array(arr.reshape(-1), pa.int32()), SEQ_LEN)
        pq.write_table(pa.table({"input_ids": col}), out / name / "part-00000.parquet")
        import hashlib

        sha = hashlib.sha256((out / name / "part-00000.parquet").read_bytes()).hexdigest()
        splits[name] = {"shards": [{"name": f"{name}/part-00000.parquet", "rows": len(arr), "sha256": sha}],
                        "num_sequences": len(arr), "num_tokens": int(arr.size)}
    (out / "manifest.json").write_text(json.dumps({
        "kind": "prep", "name": "facts", "config_hash": "fixture", "seq_len": SEQ_LEN, "splits": splits,
        "tokenizer": {"dir": "tokenizer", "sha256": "fixture", "vocab_size": len(tok),
                      "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}}))
    return out


@pytest.fixture(scope="module")
def trained(ray_on_cluster, tmp_path_factory):
    """(prep dir, train manifest, export dir) of the real train job memorising the facts."""
    from rayworks.config.jobs import load_job_data
    from rayworks.train.job import run

    root = tmp_path_factory.mktemp("evaljob")
    prep = facts_prep(root / "prep")
    job = load_job_data({
        "kind": "train", "name": "facts", "model": {"preset": "tiny"},
        "data": {"prep_uri": str(prep), "num_val_sequences": NUM_VAL},
        "deepspeed": {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 16,
                      "gradient_accumulation_steps": 1,
                      "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}},
                      "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 20, "warmup_max_lr": "auto"}},
                      "zero_optimization": {"stage": 0}},
        "scaling": {"num_workers": 1},
        # ~100 steps memorise the 48 facts at this rate (measured: MC accuracy 0.96 after 80 steps).
        "run": {"num_steps": 120, "log_every_steps": 40, "eval_every_steps": 60, "checkpoint_every_steps": 120,
                "output_uri": str(root / "train")}}, "test", Path("/"))
    manifest = run(job)
    return prep, manifest, root / "train" / "export"


@pytest.fixture(scope="module")
def random_init(trained, tmp_path_factory) -> Path:
    """A freshly initialised model of the trained model's shape, with the same tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    _, _, export = trained
    out = tmp_path_factory.mktemp("random") / "model"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(export)).to(torch.float32).save_pretrained(out)
    for f in export.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    return out


def eval_run(model: Path, compare_to: Path, prep: Path, out: Path) -> dict:
    from rayworks.config.jobs import load_job_data
    from rayworks.eval.job import run

    return run(load_job_data({
        "kind": "eval", "name": out.name, "model": str(model), "compare_to": str(compare_to),
        "perplexity": {"prep_uri": str(prep), "max_sequences": NUM_VAL, "batch_size": 8},
        "harness": {"include_path": str(TASKS), "tasks": ["rw_facts_mc", "rw_facts_gen"], "backend": "hf"},
        "gate": {"max_val_loss_regression": 0.05, "min_accuracy": {"rw_facts_mc": 0.9}},
        "output": {"uri": str(out)}}, "test", Path("/")))


@pytest.fixture(scope="module")
def runs(trained, random_init, tmp_path_factory):
    prep, _, export = trained
    root = tmp_path_factory.mktemp("evals")
    return {"trained": eval_run(export, random_init, prep, root / "trained"),
            "random": eval_run(random_init, export, prep, root / "random"),
            "root": root}


def acc(results: dict, task: str) -> float:
    r = results["harness"]["results"][task]
    return r.get("acc,none", r.get("exact_match,none"))


def test_trained_model_scores_near_100_and_random_init_scores_chance(runs):
    t, r = runs["trained"], runs["random"]
    assert acc(t, "rw_facts_mc") >= 0.9, t["harness"]
    assert acc(t, "rw_facts_gen") >= 0.8, t["harness"]
    # 8 colours, each the answer to 6 of the 48 facts: chance is 1/8, and a model that always
    # prefers one colour scores exactly that.
    assert acc(r, "rw_facts_mc") <= 0.3, r["harness"]
    assert acc(r, "rw_facts_gen") <= 0.1, r["harness"]


def test_val_loss_matches_training_and_the_manifest_records_the_inputs(runs, trained):
    _, train_manifest, export = trained
    t = runs["trained"]
    loss = t["perplexity"]["prep:val"]["loss"]
    assert t["perplexity"]["prep:val"]["num_tokens"] == NUM_VAL * (SEQ_LEN - 1)
    assert abs(loss - train_manifest["val_loss"]) / train_manifest["val_loss"] < 0.01, (loss, train_manifest)
    m = json.loads((runs["root"] / "trained" / "manifest.json").read_text())
    roles = {i["role"]: i for i in m["inputs"]}
    assert roles["model"]["sha256"] == __import__("hashlib").sha256((export / "manifest.json").read_bytes()).hexdigest()
    assert {f["path"] for f in roles["tasks"]["files"]} >= {"facts.jsonl", "rw_facts_mc.yaml", "rw_facts_gen.yaml"}
    assert roles["prep"]["sha256"] and m["versions"]["lm_eval"] and m["kind"] == "eval"
    saved = json.loads((runs["root"] / "trained" / "results.json").read_text())
    assert saved["perplexity"] == t["perplexity"]
    # The training run is found through the train manifest beside the export. Integration tests run
    # with the session's MLflow server down (tests/conftest.py): training recorded no run, and the eval
    # job says so instead of failing (the e2e pipeline checks the scores in a live server's run).
    tr = m["tracking"]
    assert tr["found_by"] == "train manifest" and tr["step"] == train_manifest["steps"], tr
    assert tr["run_id"] == (train_manifest.get("tracking") or {}).get("run_id"), (tr, train_manifest["tracking"])
    other = json.loads((runs["root"] / "random" / "manifest.json").read_text())["tracking"]
    assert other.get("run_id") is None and "no rayworks training export" in other.get("reason", ""), other


def test_gate_passes_the_better_model_and_refuses_the_worse(runs):
    from rayworks.config.eval import GateRules
    from rayworks.eval import gate

    t, r = runs["trained"], runs["random"]
    assert t["gate"]["passed"] and not r["gate"]["passed"]
    failed = {c["rule"] for c in r["gate"]["checks"] if not c["passed"]}
    assert failed == {"max_val_loss_regression", "min_accuracy"}
    with pytest.raises(gate.GateFailedError) as e:
        gate.enforce(GateRules(**r["gate"]["rules"]), r, "candidate")
    # Both scores side by side: the random candidate's loss and the trained (serving) model's.
    cand, serving = r["perplexity"]["prep:val"]["loss"], r["baseline"]["perplexity"]["prep:val"]["loss"]
    assert f"{cand:.4f}" in str(e.value) and f"{serving:.4f}" in str(e.value)


def test_scores_are_deterministic_across_runs(runs, trained, random_init):
    prep, _, export = trained
    again = eval_run(export, random_init, prep, runs["root"] / "trained-again")
    first = runs["trained"]

    def losses(res: dict) -> dict:
        return {(who, k): (v["loss"], v["num_tokens"]) for who, part in
                (("candidate", res["perplexity"]), ("serving", res["baseline"]["perplexity"])) for k, v in part.items()}

    assert losses(again) == losses(first)  # bit for bit
    assert again["harness"]["results"] == first["harness"]["results"]
