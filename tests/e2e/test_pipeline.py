"""The main job end to end: `rayworks run` takes text to a served model on a local cluster.

A reduced pipeline (small corpus with planted duplicates and too-short documents, a few
dozen training steps: tests/conftest.py) runs through the real CLI: three Ray jobs; the
prep manifest's drop counts match a count made here; validation loss fell; the `curl`
command the run prints works as printed; the lineage chain leads from the served model
back to the input files; a rerun skips every stage; a changed training setting reruns
train and serve but not prep.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from integration.prep_corpus import clean as clean_text

pytestmark = pytest.mark.e2e


def _stages(out: str) -> dict[str, str]:
    return dict(re.findall(r"^\s+(prep|train|serve)\s+(ran|skipped)\s", out, re.M))


def _printed_curl(out: str) -> str:
    """The `curl` command of the run's summary, exactly as printed (two lines, `\\` continued)."""
    lines = out.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("curl "))
    assert lines[i].endswith("\\"), lines[i:i + 2]
    return lines[i].lstrip() + "\n" + lines[i + 1]


def _expected_counts(root: Path, clean: dict) -> dict:
    """Drops and duplicates over the pipeline's inputs, counted here in plain Python."""
    raw = [json.loads(ln)["text"] for p in [*sorted((root / "corpus").glob("*.jsonl")), root / "extra.jsonl"]
           for ln in p.read_text().splitlines() if ln.strip()]
    seen, dup, dropped = set(), 0, {}
    for s in raw:
        c, why = clean_text(s, clean)
        if why:
            dropped[why] = dropped.get(why, 0) + 1
        elif c in seen:
            dup += 1
        else:
            seen.add(c)
    return {"documents_read": len(raw), "duplicates": dup, "dropped": dropped}


@pytest.mark.timeout(1800)  # the first pipeline run (if this test is first to ask for it) and two reruns
def test_pipeline_end_to_end(local_cluster, pipeline_run):
    pipe, first, model_id = pipeline_run.pipe, pipeline_run.first, pipeline_run.model_id
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    assert _stages(first.stdout) == {"prep": "ran", "train": "ran", "serve": "ran"}, first.stdout[-3000:]
    assert "smoke test: 'def ' ->" in first.stdout

    # Prep dropped what conftest planted (4 repeated documents, 2 under min_chars), and the
    # counts agree with an independent count over the same inputs.
    prep = json.loads((local_cluster.storage / "prep" / "e2e-prep" / "manifest.json").read_text())
    want = _expected_counts(Path(pipe).parent, prep["config"]["clean"])
    c = prep["counts"]
    assert c["documents_read"] == want["documents_read"]
    assert c["duplicates"] == want["duplicates"] >= 4
    cleaning = {k: v for k, v in c["dropped"].items() if "." not in k}  # curation reasons are dotted
    assert cleaning == want["dropped"] and want["dropped"].get("too_short", 0) >= 2, (c, want)
    # The curation stages dropped each planted document under its own reason, and nothing of the
    # corpus (tests/qualitydocs.py), and redacted the planted PII.
    from qualitydocs import PLANTED

    assert {k: v for k, v in c["dropped"].items() if "." in k} == {r: 1 for r in PLANTED}, c["dropped"]
    assert all(c["pii_redacted"].get(k, 0) >= 1 for k in ("pii.email", "pii.ipv4", "pii.ipv6", "pii.phone")), c
    # The near_dup stage removed the planted near-copy of an earlier document (and counts it).
    assert c["near_duplicates"] >= 1 and prep["near_dup"]["documents_removed"] == c["near_duplicates"], prep

    # Training learned: validation loss fell from its step-0 value.
    train = json.loads((local_cluster.storage / "train" / "e2e-train" / "manifest.json").read_text())
    assert train["steps"] == 24 and train["val_loss"] < train["val_loss_step0"], train

    # The served model answers the printed `curl`, run as printed (key read from its file by
    # the shell), and refuses without the key.
    key = pipeline_run.keys.read_text().split()[0]
    assert key not in first.stdout + first.stderr  # the key is never printed
    curl = _printed_curl(first.stdout)
    assert f"{pipeline_run.base_url}/v1/completions" in curl and f"\"model\": \"{model_id}\"" in curl
    out = subprocess.run(["bash", "-c", curl],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("{"), out.stdout[-2000:] + out.stderr[-2000:]
    body = json.loads(out.stdout)
    assert body["model"] == model_id and 1 <= body["usage"]["completion_tokens"] <= 32, body
    # ... and so does the printed `openai` one-liner (with this venv's python first on PATH).
    py = next(ln.strip() for ln in first.stdout.splitlines() if ln.strip().startswith("python -c "))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", "-c", py], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]  # an auth or model error raises
    url = f"{pipeline_run.base_url}/v1/completions"
    assert requests.post(url, json={"model": model_id, "prompt": "import ", "max_tokens": 5},
                         timeout=30).status_code == 401

    # Lineage: served model -> serve manifest -> export -> training run -> prep -> input files.
    lin = local_cluster.rayworks("lineage", model_id, "--cluster", str(local_cluster.spec_path), "--json")
    assert lin.returncode == 0, lin.stdout[-3000:] + lin.stderr[-2000:]
    nodes = json.loads(lin.stdout)
    kinds = [n["kind"] for n in nodes]
    for k in ("serve", "export", "prep", "file"):
        assert k in kinds, kinds
    assert kinds.index("serve") < kinds.index("export") < kinds.index("prep") < kinds.index("file")
    assert all(n["status"] == "ok" for n in nodes), nodes
    assert any(n["kind"] == "file" and n["path"].endswith("extra.jsonl") for n in nodes)

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

    # MLflow (the session's own server, started by `rayworks up`): every `rayworks run` is a parent
    # run with a nested run per stage, and the third run's rollout moved @serving to the version of
    # the export it deployed (a new version: the 28-step export is other bytes).
    import hashlib

    from mlflow import MlflowClient

    from rayworks.tracking import experiment_name, tracking_uri

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a server that is down fails fast
    ml = MlflowClient(tracking_uri(local_cluster.spec))
    eid = ml.get_experiment_by_name(experiment_name(local_cluster.spec)).experiment_id
    parents = ml.search_runs([eid], "tags.`rayworks.pipeline` = 'e2e'", order_by=["attributes.start_time DESC"])
    assert len(parents) >= 3, [p.info.run_name for p in parents]
    nested = ml.search_runs([eid], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    stages = {r.data.tags["rayworks.stage"]: r.data.tags["rayworks.status"] for r in nested}
    assert {k: stages.get(k) for k in ("prep", "train", "serve")} == {"prep": "skipped", "train": "ran",
                                                                      "serve": "ran"}, stages
    # A stage job's own run is its nested run: prep's (first pipeline run) holds the prep job's own
    # counts and is the run its manifest names; the third run's train likewise; the skipped prep's
    # nested run links the run that made its output.
    by_stage = {r.data.tags["rayworks.stage"]: r for r in nested}
    prep_track = prep["tracking"]
    made = ml.get_run(prep_track["run_id"])
    assert made.data.tags["rayworks.kind"] == "prep" and made.data.tags["rayworks.status"] == "ran"
    assert made.data.tags["mlflow.parentRunId"] == prep_track["parent_run_id"] != parents[0].info.run_id
    assert made.data.metrics["documents_kept"] == c["documents_kept"] and made.data.metrics["tokens"] == c["tokens"]
    assert made.data.metrics["dropped.too_short"] == c["dropped"]["too_short"], made.data.metrics
    assert made.data.params["config.name"] == "e2e-prep" and prep_track["skipped_logs"] == 0
    skipped = by_stage["prep"]
    assert skipped.data.tags["rayworks.output_run_id"] == prep_track["run_id"] != skipped.info.run_id
    train_track = json.loads((local_cluster.storage / "train" / "e2e-train" / "manifest.json").read_text())["tracking"]
    assert by_stage["train"].info.run_id == train_track["run_id"] and \
        train_track["parent_run_id"] == parents[0].info.run_id
    mv = ml.get_model_version_by_alias("e2e-train", "serving")
    export_sha = hashlib.sha256((local_cluster.storage / "train" / "e2e-train" / "export" / "manifest.json")
                                .read_bytes()).hexdigest()
    assert int(mv.version) >= 2 and mv.tags["rayworks.export_manifest_sha256"] == export_sha, (mv.version, mv.tags)

    # The eval stage of the third run logged its scores into the training run that made the export
    # (eval/ metrics at the export's step, equal to its results.json; results.json as an artifact).
    from rayworks.eval.training_run import metrics_of

    train = json.loads((local_cluster.storage / "train" / "e2e-train" / "manifest.json").read_text())
    ev_dir = local_cluster.storage / "eval" / "e2e-eval"
    ev_tracking = json.loads((ev_dir / "manifest.json").read_text())["tracking"]
    assert ev_tracking["run_id"] == train["tracking"]["run_id"] and ev_tracking["step"] == 28, ev_tracking
    want = metrics_of(json.loads((ev_dir / "results.json").read_text()))
    assert "eval/prep_val/loss" in want and "eval/rw_facts_mc/acc" in want, want
    for k, v in want.items():
        assert (28, v) in [(m.step, m.value) for m in ml.get_metric_history(ev_tracking["run_id"], k)], k
    assert ev_tracking["artifact"] in [f.path for f in ml.list_artifacts(ev_tracking["run_id"], "eval/e2e-eval")]


@pytest.mark.timeout(1200)
def test_gate_refuses_a_worse_model_and_the_old_one_keeps_answering(local_cluster, pipeline_run):
    """A 1-step model fails the eval stage's gate: exit 3, both scores printed, serve never runs,
    and the model already serving keeps answering."""
    worse = local_cluster.rayworks("run", pipeline_run.pipe, "--quiet", "--set", "train.name=e2e-worse",
                                   "--set", "train.run.num_steps=1", timeout=1100)
    out = worse.stdout + worse.stderr
    assert worse.returncode == 3, out[-3000:]
    assert "failed the promotion gate" in out and "max_val_loss_regression" in out, out[-3000:]
    assert _stages(worse.stdout).get("serve") != "ran", worse.stdout[-3000:]
    key = pipeline_run.keys.read_text().split()[0]
    r = requests.post(f"{pipeline_run.base_url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": pipeline_run.model_id, "prompt": "def ", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200, r.text
    served = local_cluster.rayworks("lineage", pipeline_run.model_id, "--cluster", str(local_cluster.spec_path),
                                    "--json")
    assert served.returncode == 0 and "e2e-worse" not in served.stdout, served.stdout[-2000:]
