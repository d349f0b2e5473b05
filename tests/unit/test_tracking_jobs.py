"""The MLflow runs of prep and generate jobs, and their nesting under a pipeline run, without a server.

What a job logs (flattened numbers, throughput), the gap a down server leaves in the manifest
section, the pipeline's env handing its run id to a stage job, and what `rayworks lineage`
prints. A down server is MLflow's real client against a loopback port nothing listens on.
The same paths against a real server: tests/integration/test_generate_job.py (generate) and
tests/e2e/test_pipeline.py (prep's run as the pipeline's nested stage run).
"""

from __future__ import annotations

import math
import socket

import pytest

from rayworks.config.cluster import ClusterSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def down_spec(tmp_path, **tracking) -> ClusterSpec:
    return ClusterSpec.model_validate({"name": "t", "head": {"num_cpus": 2, "memory_gb": 2},
                                       "storage": {"uri": str(tmp_path)},
                                       "tracking": {"port": free_port(), "retry_after_s": 3600, **tracking}})


def prep_job(tmp_path, **kw):
    from rayworks.config.jobs import load_job_data

    return load_job_data({"kind": "prep", "name": "p", "inputs": [{"path": str(tmp_path / "in.jsonl")}], **kw},
                         "test", tmp_path)


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    from rayworks.tracking.runs import PARENT_ENV, STAGE_ENV

    for k in ("MLFLOW_TRACKING_URI", PARENT_ENV, STAGE_ENV):
        monkeypatch.delenv(k, raising=False)


def test_numbers_flatten_into_valid_metric_names_and_text_is_left_out():
    from rayworks.tracking.jobrun import numeric_metrics, rates

    got = numeric_metrics({"documents_read": 10, "dropped": {"too_short": 2, "quality.gopher:words": 1},
                           "ok": True, "name": "x", "none": None, "nan": math.nan, "list": [1, 2],
                           "pii_redacted": {"pii.email": 3}, "seconds": 1.5})
    assert got == {"documents_read": 10.0, "dropped.too_short": 2.0, "dropped.quality.gopher_words": 1.0,
                   "pii_redacted.pii.email": 3.0, "seconds": 1.5}
    assert rates(2.0, documents=10, tokens=5) == {"documents_per_s": 5.0, "tokens_per_s": 2.5}
    assert rates(0.0, documents=10) == {}


def test_prep_logs_its_manifest_counts_and_throughput_and_tracking_is_not_in_the_config_hash(tmp_path):
    from rayworks.config.base import config_hash
    from rayworks.data.job import manifest_config, run_metrics
    from rayworks.tracking.jobrun import numeric_metrics

    man = {"counts": {"documents_read": 100, "documents_kept": 80, "dropped": {"too_short": 15}, "duplicates": 5,
                      "tokens": 4000, "bytes_read": 2_000_000, "sequences": 30}}
    m = numeric_metrics(run_metrics(man, 4.0))
    assert m["documents_kept"] == 80 and m["dropped.too_short"] == 15 and m["tokens"] == 4000
    assert m["documents_per_s"] == 25 and m["tokens_per_s"] == 1000 and m["mb_per_s"] == 0.5 and m["seconds"] == 4
    # Logging to MLflow or not builds the same output: the same config hash, so no rebuild.
    assert config_hash(manifest_config(prep_job(tmp_path))) == config_hash(manifest_config(prep_job(tmp_path,
                                                                                                   tracking=False)))


def test_generate_logs_completions_tokens_and_errors_by_type():
    from rayworks.generate.job import run_metrics
    from rayworks.tracking.jobrun import numeric_metrics

    summary = {"run_id": "20261128-x", "num_prompts": 189, "num_errors": 3, "errors_by_type": {"too_long": 1},
               "num_generated": 100, "num_output_tokens": 2000, "output_tokens_per_s": 50.0}
    m = numeric_metrics(run_metrics(summary, 189))
    assert m == {"num_prompts": 189, "num_errors": 3, "errors_by_type.too_long": 1, "num_generated": 100,
                 "num_output_tokens": 2000, "output_tokens_per_s": 50.0, "num_completions": 189}


def test_a_job_whose_server_is_down_records_the_gap_and_its_pipeline_parent(tmp_path, monkeypatch, capsys):
    from rayworks.tracking import jobrun
    from rayworks.tracking.runs import PARENT_ENV, STAGE_ENV

    monkeypatch.setenv(PARENT_ENV, "parent123")
    monkeypatch.setenv(STAGE_ENV, "prep")
    s = down_spec(tmp_path)
    t = jobrun.start(s, prep_job(tmp_path), "prep", str(tmp_path / "out"))
    assert t.run_id is None and t.parent_run_id == "parent123"
    section = jobrun.results(t, {"documents_read": 3})
    jobrun.close(t, None)
    assert section["enabled"] and section["run_id"] is None and section["parent_run_id"] == "parent123"
    # One failed call (the run could not be opened); params and metrics then skipped, and counted.
    assert section["failed_calls"] == 1 and section["skipped_logs"] == 2, section
    assert section["uri"] == s.tracking.client_uri() and "MlflowException" in section["last_error"]
    out = capsys.readouterr().out
    assert out.count("WARNING") == 1 and "tracking gap: 2 logs" in out


def test_tracking_off_for_the_job_or_the_spec_opens_no_run(tmp_path):
    from rayworks.tracking import jobrun

    job = prep_job(tmp_path, tracking=False)
    assert jobrun.start(down_spec(tmp_path), job, "prep", "x").gap() == {"enabled": False}
    t = jobrun.start(down_spec(tmp_path, enabled=False), prep_job(tmp_path), "prep", "x")
    assert t.uri is None and jobrun.results(t, {"a": 1}) == {"enabled": False}


def test_a_stage_run_is_its_pipelines_only_when_the_manifest_names_that_parent():
    from rayworks.tracking.pipeline import made_by

    man = {"tracking": {"run_id": "r1", "parent_run_id": "p1"}}
    assert made_by(man, "p1") == ("r1", True)
    assert made_by(man, "p2") == ("r1", False)  # made by an earlier pipeline run: link it
    assert made_by({"tracking": {"run_id": "r1"}}, "p1") == ("r1", False)  # a standalone job's output
    assert made_by({"tracking": {"enabled": False}}, "p1") == (None, False)
    assert made_by({}, None) == (None, False)


def test_a_pipeline_whose_server_is_down_hands_no_parent_to_its_jobs(tmp_path, capsys):
    from rayworks.tracking.pipeline import PipelineRun

    run = PipelineRun(down_spec(tmp_path), "p")
    assert run.run_id is None and run.env("prep") == {}
    assert run.stage("prep", {"status": "ran", "manifest": str(tmp_path / "none.json")}) is None
    assert run.finish() is None
    assert "the pipeline run is not in MLflow" in capsys.readouterr().out
    assert PipelineRun(down_spec(tmp_path, enabled=False), "p").env("prep") == {}


def test_lineage_prints_the_run_its_pipeline_run_and_a_gap():
    from rayworks.client.lineage import _facts

    assert "mlflow_run=r1 mlflow_pipeline_run=p1" in _facts({"kind": "prep", "tracking": {"run_id": "r1",
                                                                                         "parent_run_id": "p1"}})
    assert "mlflow_run=r2 mlflow_gap=4" in _facts({"kind": "generate", "tracking": {"run_id": "r2", "skipped_logs": 4}})
    assert "mlflow_run=none(gap:2 logs)" in _facts({"kind": "prep", "tracking": {"enabled": True, "run_id": None,
                                                                                 "skipped_logs": 2}})
    assert "mlflow" not in _facts({"kind": "prep", "tracking": {"enabled": False}})
