"""An eval job's scores in the training run's MLflow record (rayworks.eval.training_run).

Finding the training run of an export, the ``eval/`` metrics, logging them into a real MLflow
store (MLflow's own SQLite backend, no server process: the client is the same one a job uses),
and a tracking server that is down (a port nobody listens on), which must cost a warning and a
line in the manifest, never the eval job.
"""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
import yaml

RESULTS = {
    "model": "x",
    "perplexity": {"prep:val": {"loss": 0.5, "perplexity": 1.6487212707, "num_tokens": 1008}},
    "harness": {"results": {
        "rw_facts_mc": {"acc,none": 1.0, "acc_stderr,none": 0.0, "acc_norm,none": 0.875},
        "rw_facts_gen": {"exact_match,strict-match": 0.75, "exact_match_stderr,strict-match": 0.1}}},
    "gate": {"passed": True, "checks": []},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_output(root: Path, run_id: str | None = "run-abc", step: int = 120) -> Path:
    """A training output's layout: export/manifest.json and the train manifest that lists it."""
    export = root / "train" / "export"
    export.mkdir(parents=True)
    (export / "config.json").write_text("{}")
    data = json.dumps({"kind": "export", "step": step, "name": "t"}).encode()
    (export / "manifest.json").write_bytes(data)
    (root / "train" / "manifest.json").write_text(json.dumps({
        "kind": "train", "name": "t", "steps": step,
        "outputs": [{"path": "export/manifest.json", "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": 1}],
        "tracking": {"enabled": True, "run_id": run_id}}))
    return export


def eval_job(root: Path, model: Path, port: int, tracking: bool = True):
    from rayworks.config.jobs import load_job_data

    (root / "artifacts").mkdir(exist_ok=True)
    spec = root / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "rwevaltrack", "head": {"num_cpus": 2, "memory_gb": 2},
                                    "storage": {"uri": str(root / "artifacts")},
                                    "tracking": {"port": port, "request_timeout_s": 5}}))
    return load_job_data({"kind": "eval", "name": "ev", "cluster": str(spec), "model": str(model),
                          "perplexity": {"jsonl": [str(root / "x.jsonl")]}, "tracking": tracking}, "test", root)


def test_metrics_are_namespaced_under_eval_and_skip_stderr():
    from rayworks.eval.training_run import metrics_of

    assert metrics_of(RESULTS) == {
        "eval/prep_val/loss": 0.5, "eval/prep_val/perplexity": 1.6487212707,
        "eval/rw_facts_mc/acc": 1.0, "eval/rw_facts_mc/acc_norm": 0.875,
        "eval/rw_facts_gen/exact_match_strict-match": 0.75, "eval/gate_passed": 1.0}


def test_the_train_manifest_beside_the_export_names_the_run_only_for_that_export(tmp_path):
    from rayworks.eval.training_run import export_facts, run_from_train_manifest

    export = training_output(tmp_path)
    facts = export_facts(str(export))
    assert facts["step"] == 120 and facts["train_manifest"] == str(tmp_path / "train" / "manifest.json")
    assert run_from_train_manifest(facts["train_manifest"], facts["sha256"]) == (True, "run-abc")
    # Retrained in place since: the train manifest lists other export bytes, so it is not this export's run.
    assert run_from_train_manifest(facts["train_manifest"], "0" * 64) == (False, None)
    assert export_facts(str(tmp_path)) is None  # no export manifest: no rayworks export


def test_a_down_server_is_a_warning_and_a_manifest_line_never_an_error(tmp_path, capsys):
    from rayworks.eval.training_run import log_to_training_run

    export = training_output(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps(RESULTS))
    job = eval_job(tmp_path, export, free_port())
    section = log_to_training_run(job, RESULTS, str(tmp_path / "results.json"))
    assert section["run_id"] == "run-abc" and section["found_by"] == "train manifest" and section["step"] == 120
    assert section["metrics_logged"] == [] and section["artifact"] is None
    # The first call failed; the artifact and the tag were skipped without asking the server again.
    assert section["failed_calls"] == 1 and section["skipped_logs"] == 3 and section["last_error"], section
    assert capsys.readouterr().out.count("WARNING") == 1


def test_no_train_manifest_asks_the_registry_and_a_down_one_is_recorded(tmp_path, capsys):
    from rayworks.eval.training_run import log_to_training_run

    export = training_output(tmp_path)
    (tmp_path / "train" / "manifest.json").unlink()
    section = log_to_training_run(eval_job(tmp_path, export, free_port()), RESULTS, str(tmp_path / "r.json"))
    assert section["run_id"] is None and section["failed_calls"] == 1 and section["last_error"], section
    assert "no training run found" in section["reason"] and "WARNING" in capsys.readouterr().out


def test_tracking_off_or_no_export_logs_nothing(tmp_path):
    from rayworks.eval.training_run import log_to_training_run

    export = training_output(tmp_path)
    assert log_to_training_run(eval_job(tmp_path, export, free_port(), tracking=False), RESULTS, "r") == \
        {"enabled": False}
    plain = tmp_path / "hf"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    section = log_to_training_run(eval_job(tmp_path, plain, free_port()), RESULTS, "r")
    assert section["run_id"] is None and "no rayworks training export" in section["reason"]


def test_scores_land_in_the_training_run_at_the_export_step_once(tmp_path):
    """Into a real MLflow store: eval/ metrics at step 120, results.json as an artifact, a rerun adds nothing."""
    from mlflow.tracking import MlflowClient

    from rayworks.eval import training_run as tr

    uri = f"sqlite:///{tmp_path}/mlflow.db"  # the backend store `rayworks tracking up` runs
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "mlartifacts").as_uri())
    run_id = client.create_run(exp, run_name="train t").info.run_id
    client.log_metric(run_id, "val_loss", 0.6, step=120)
    client.set_terminated(run_id)  # the training run ended long before its export is evaluated
    export = training_output(tmp_path, run_id=run_id)
    (tmp_path / "out").mkdir()
    results_uri = str(tmp_path / "out" / "results.json")
    Path(results_uri).write_text(json.dumps(RESULTS))
    job = eval_job(tmp_path, export, free_port())
    facts = tr.export_facts(str(export))

    section = tr._log(job, uri, facts, RESULTS, results_uri)
    want = tr.metrics_of(RESULTS)
    assert section["run_id"] == run_id and section["skipped_logs"] == 0 and sorted(want) == section["metrics_logged"]
    for key, value in want.items():
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, key)] == [(120, value)], key
    assert client.get_metric_history(run_id, "val_loss")[0].value == 0.6  # training's own curve untouched
    assert section["artifact"] == "eval/ev/results.json"
    got = client.download_artifacts(run_id, "eval/ev/results.json", str(tmp_path / "dl"))
    assert json.loads(Path(got).read_text()) == RESULTS
    assert client.get_run(run_id).data.tags["rayworks.eval.ev"] == str(tmp_path / "out")

    again = tr._log(job, uri, facts, RESULTS, results_uri)
    assert again["metrics_logged"] == [] and again["skipped_logs"] == 0
    assert all(len(client.get_metric_history(run_id, k)) == 1 for k in want)


@pytest.mark.parametrize("task_key,metric", [("acc,none", "acc"), ("f1,my filter:x", "f1_my filter_x")])
def test_metric_keys_are_ones_mlflow_accepts(task_key, metric):
    from rayworks.eval.training_run import metrics_of

    assert list(metrics_of({"harness": {"results": {"t": {task_key: 0.5}}}})) == [f"eval/t/{metric}"]
