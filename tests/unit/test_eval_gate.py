"""The promotion gate's rules on eval results (pure logic: no Ray, no models)."""

from __future__ import annotations

import math

import pytest

from rayworks.config.eval import GateRules
from rayworks.eval import gate


def results(loss: float | None = 2.0, serving: float | None = 2.1, tasks: dict | None = None, sources=("prep:val",)):
    r: dict = {}
    if loss is not None:
        r["perplexity"] = {s: {"loss": loss, "num_tokens": 100} for s in sources}
    if serving is not None:
        r["baseline"] = {"perplexity": {s: {"loss": serving, "num_tokens": 100} for s in sources}}
    if tasks is not None:
        r["harness"] = {"results": tasks}
    return r


@pytest.mark.parametrize("loss,serving,limit,ok", [
    (2.0, 2.1, 0.0, True),     # better than serving
    (2.1, 2.1, 0.0, True),     # equal is no regression
    (2.15, 2.1, 0.05, True),   # exactly at the allowed regression
    (2.1501, 2.1, 0.05, False),
    (3.0, 2.1, 0.5, False),
    (float("nan"), 2.1, 10.0, False),  # a NaN loss never passes
])
def test_loss_rule_compares_with_the_serving_model(loss, serving, limit, ok):
    v = gate.evaluate(GateRules(max_val_loss_regression=limit), results(loss, serving))
    assert v.passed is ok
    (c,) = v.checks
    assert c.rule == "max_val_loss_regression" and c.baseline == serving
    assert math.isclose(c.limit, serving + limit)


def test_every_perplexity_source_is_checked_and_one_regression_fails_the_gate():
    r = results(2.0, 2.0, sources=("prep:val", "jsonl"))
    r["perplexity"]["jsonl"]["loss"] = 2.5
    v = gate.evaluate(GateRules(max_val_loss_regression=0.1), r)
    assert [(c.subject, c.passed) for c in v.checks] == [("jsonl", False), ("prep:val", True)]
    assert not v.passed


def test_nothing_serving_passes_the_loss_rule_and_says_why():
    v = gate.evaluate(GateRules(max_val_loss_regression=0.0), results(5.0, None))
    assert v.passed and v.checks[0].note == "no model serving to compare with"


def test_loss_rule_without_perplexity_results_fails():
    v = gate.evaluate(GateRules(max_val_loss_regression=0.1), results(None, None))
    assert not v.passed


def test_accuracy_rule_reads_acc_then_exact_match():
    tasks = {"mc": {"acc,none": 0.9, "acc_stderr,none": 0.01, "acc_norm,none": 0.1},
             "gen": {"exact_match,strict": 0.4}}
    v = gate.evaluate(GateRules(min_accuracy={"mc": 0.9, "gen": 0.5}), results(tasks=tasks))
    assert {c.subject: (c.candidate, c.passed, c.note) for c in v.checks} == {
        "mc": (0.9, True, "acc"), "gen": (0.4, False, "exact_match")}
    assert not v.passed


def test_accuracy_rule_on_a_task_missing_from_the_results_fails():
    v = gate.evaluate(GateRules(min_accuracy={"mc": 0.1}), results(tasks={"other": {"acc,none": 1.0}}))
    assert not v.passed and "not in the results" in v.checks[0].note
    v = gate.evaluate(GateRules(min_accuracy={"mc": 0.1}), results(tasks={"mc": {"word_perplexity,none": 3.0}}))
    assert not v.passed


def test_no_rules_pass():
    assert gate.evaluate(GateRules(), results()).passed


def test_enforce_raises_with_both_scores_side_by_side():
    rules = GateRules(max_val_loss_regression=0.01, min_accuracy={"mc": 0.5})
    r = results(2.5, 2.0, tasks={"mc": {"acc,none": 0.75}})
    with pytest.raises(gate.GateFailedError) as e:
        gate.enforce(rules, r, "model v2")
    msg = str(e.value)
    assert "model v2 failed the promotion gate (max_val_loss_regression on prep:val)" in msg
    line = next(ln for ln in msg.splitlines() if ln.startswith("max_val_loss_regression"))
    assert "2.5000" in line and "2.0000" in line and "2.0100" in line and "FAIL" in line
    assert e.value.exit_code != 0
    assert gate.enforce(rules, results(2.0, 2.0, tasks={"mc": {"acc,none": 0.5}}), "v3").passed


def test_verdict_serialises():
    d = gate.evaluate(GateRules(min_accuracy={"mc": 0.5}), results(tasks={"mc": {"acc,none": 0.6}})).as_dict()
    assert d == {"passed": True, "checks": [{"rule": "min_accuracy", "subject": "mc", "candidate": 0.6,
                                             "baseline": 0.5, "limit": 0.5, "passed": True, "note": "acc"}]}


def test_recorded_scores_compare_only_on_identical_data():
    cand = {"perplexity": {"prep:val": {"loss": 2.2, "data_sha256": "d1"}, "jsonl": {"loss": 3.0, "data_sha256": "j2"}}}
    rec = {"model": "old", "perplexity": {"prep:val": {"loss": 2.0, "data_sha256": "d1"},
                                          "jsonl": {"loss": 3.0, "data_sha256": "j1"}}}
    merged = gate.with_recorded_baseline(cand, rec)
    assert merged["baseline"]["perplexity"] == {"prep:val": rec["perplexity"]["prep:val"]}
    assert merged["baseline"]["incomparable"] == ["jsonl"]
    v = gate.evaluate(GateRules(max_val_loss_regression=0.5), merged)
    assert {c.subject: c.passed for c in v.checks} == {"prep:val": True, "jsonl": False}  # other data: fail closed
    v = gate.evaluate(GateRules(max_val_loss_regression=0.1), merged)
    assert {c.subject: c.passed for c in v.checks} == {"prep:val": False, "jsonl": False}


def test_serving_model_is_read_from_the_serve_manifest_and_replaced_files_are_noticed(tmp_path):
    import hashlib
    import json

    from rayworks.eval import promote

    export = tmp_path / "train" / "t" / "export"
    export.mkdir(parents=True)
    (export / "manifest.json").write_text('{"kind": "export", "step": 1}')
    sha = hashlib.sha256((export / "manifest.json").read_bytes()).hexdigest()
    serve = tmp_path / "serve" / "app"
    serve.mkdir(parents=True)
    (serve / "manifest.json").write_text(json.dumps({"kind": "serve", "inputs": [
        {"role": "model", "model": "m", "source": str(export), "path": str(export / "manifest.json"), "sha256": sha}]}))
    storage = str(tmp_path)
    assert promote.serving_model(storage, "nothing", "m") is None
    now = promote.serving_model(storage, "app", "m")
    assert (now.source, now.deployed_sha256, now.unchanged) == (str(export), sha, True)
    (export / "manifest.json").write_text('{"kind": "export", "step": 2}')  # retrained in place
    assert promote.serving_model(storage, "app", "m").unchanged is False

    # Then the scores recorded at its promotion stand in, on identical data only.
    promote.record_serving(storage, "pipe", {"model": str(export), "perplexity": {
        "prep:val": {"loss": 2.0, "data_sha256": "d"}}})
    worse = {"perplexity": {"prep:val": {"loss": 2.5, "data_sha256": "d"}}}
    with pytest.raises(gate.GateFailedError, match="2.5000 +2.0000"):
        promote.decide(GateRules(max_val_loss_regression=0.1), worse, storage, "pipe", "new")
    assert promote.decide(GateRules(max_val_loss_regression=0.1), worse, storage, None, "new").passed  # no record


def test_pipeline_compares_with_the_served_export_and_refuses_a_worse_one(tmp_path, capsys):
    """The client side of the eval stage: the baseline link from the serve manifest, then the verdict."""
    import hashlib
    import json

    import yaml

    from conftest import make_spec_dict
    from rayworks.client.pipeline import eval_gate, serving_links
    from rayworks.config.jobs import load_job_data

    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(make_spec_dict("unit", tmp_path / "st")))
    pipe = load_job_data({"kind": "pipeline", "name": "p", "cluster": str(spec_path),
                          "prep": {"kind": "prep", "name": "p-prep", "inputs": [{"path": "c.jsonl"}]},
                          "train": {"kind": "train", "name": "p-train"},
                          "eval": {"kind": "eval", "perplexity": {"split": "val"},
                                   "gate": {"max_val_loss_regression": 0.05}},
                          "serve": {"kind": "serve", "name": "p-serve", "models": [{"id": "tiny", "source": "x"}],
                                    "auth": {"api_keys_file": str(tmp_path / "keys")}}}, "t", tmp_path)
    spec = pipe.cluster_spec()
    links = {"prep_output": str(tmp_path / "st/prep/p-prep"), "export_dir": str(tmp_path / "st/train/p-train/export")}
    assert serving_links(pipe, spec, links) == {}  # nothing deployed yet
    old = tmp_path / "st" / "train" / "old" / "export"
    old.mkdir(parents=True)
    (old / "manifest.json").write_text('{"kind": "export"}')
    (tmp_path / "st" / "serve" / "p-serve").mkdir(parents=True)
    (tmp_path / "st" / "serve" / "p-serve" / "manifest.json").write_text(json.dumps({"kind": "serve", "inputs": [
        {"role": "model", "model": "tiny", "source": str(old),
         "sha256": hashlib.sha256((old / "manifest.json").read_bytes()).hexdigest()}]}))
    links.update(serving_links(pipe, spec, links))
    ev = pipe.stage_job("eval", links)
    assert ev.compare_to == str(old)
    out = tmp_path / "st" / "eval" / "p-eval"
    out.mkdir(parents=True)
    (out / "results.json").write_text(json.dumps({
        "perplexity": {"prep:val": {"loss": 3.0}}, "baseline": {"perplexity": {"prep:val": {"loss": 2.0}}}}))
    with pytest.raises(gate.GateFailedError, match="3.0000 +2.0000 +2.0500 +FAIL"):
        eval_gate(ev, pipe, spec, str(out))
