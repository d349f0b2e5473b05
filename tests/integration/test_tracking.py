"""The MLflow server rayworks runs (`rayworks tracking up|down|status`), and what goes into it without training.

One real server for the module, started and stopped through the CLI. Training runs are
tracked in tests/integration/test_train_run.py (metrics equal to Ray Train's, one run across
a killed worker and a resubmission, the export's model version, the serving alias, a down
server's gap); here: the server's lifecycle, a replayed step logged once, a pipeline's nested
stage runs (a stage job's own run nested under the pipeline's), and `serve update` resolving `models:/`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import mlflowfixture as mlf

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the spec decides
    return subprocess.run([str(Path(sys.executable).with_name("rayworks")), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`rayworks tracking up` on a spec of its own; `down` at the end, checked to leave nothing running."""
    from rayworks.config.cluster import load_cluster_spec
    from rayworks.tracking import server as srv

    spec_path = mlf.write_spec(tmp_path_factory.mktemp("tracking"), mlf.TRACKING_PORT)
    spec = load_cluster_spec(spec_path)
    srv.down(spec, quiet=True)
    proc = cli("tracking", "up", str(spec_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pid = srv.read_pid(spec)
    yield spec_path, spec, spec.tracking.client_uri(), pid
    proc = cli("tracking", "down", str(spec_path))
    assert proc.returncode == 0 and f"stopped (pid {pid})" in proc.stdout, proc.stdout + proc.stderr
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the server and every worker it forked are gone
    assert not Path(srv.paths(spec)["pid"]).exists()
    assert cli("tracking", "status", str(spec_path)).returncode == 1  # not answering any more


def test_the_server_is_mlflow_on_loopback_with_sqlite_and_artifacts_under_storage(server):
    from rayworks.tracking import server as srv

    spec_path, spec, url, pid = server
    assert url == f"http://127.0.0.1:{mlf.TRACKING_PORT}" and srv.health(url)
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    db = f"{spec.storage.uri}/mlflow/mlflow.db"
    assert args[args.index("--host") + 1] == "127.0.0.1" and args[args.index("--backend-store-uri") + 1] == \
        f"sqlite:///{db}" and Path(db).is_file()
    again = cli("tracking", "up", str(spec_path))  # idempotent: the same server, not a second one
    assert again.returncode == 0 and f"already running: {url} (pid {pid})" in again.stdout
    st = cli("tracking", "status", str(spec_path))
    assert st.returncode == 0 and "run by rayworks) up" in st.stdout and str(pid) in st.stdout
    # An artifact goes through the server into the artifact root under the spec's storage.
    from rayworks.tracking.runs import for_job

    t = for_job(spec, "artifact-check")
    assert t.log_text("hello", "notes/hello.txt")
    found = list(Path(spec.storage.uri, "mlflow", "artifacts").rglob("hello.txt"))
    assert len(found) == 1 and found[0].read_text() == "hello"


def test_a_replayed_step_is_logged_once_and_in_order(server):
    """What a worker group restarted from an earlier checkpoint does: it logs steps the run already holds."""
    from rayworks.tracking.runs import Tracker, for_job

    _, spec, url, _ = server
    first = for_job(spec, "replay")
    for step, loss in ((0, 9.0), (4, 8.0), (6, 7.0)):
        assert first.log_metrics(step, {"train_loss": loss})
    again = for_job(spec, "replay", run_id=first.run_id)  # the run id from the checkpoint: the same run
    assert again.run_id == first.run_id
    for step, loss in ((5, 7.5), (6, 6.9), (8, 6.0)):  # resumed from the step-4 checkpoint
        assert again.log_metrics(step, {"train_loss": loss})
    assert mlf.history(url, first.run_id, "train_loss") == [(0, 9.0), (4, 8.0), (6, 7.0), (8, 6.0)]
    assert isinstance(again, Tracker) and again.skipped == 0


def test_a_pipeline_run_is_a_parent_whose_stage_jobs_make_its_nested_runs(server, tmp_path, monkeypatch):
    """A stage job's own run is the nested run; a skipped stage links the run that made its output;
    a stage whose job tracks nothing (serve) gets a nested run with its manifest's counts."""
    from rayworks.config.jobs import load_job_data
    from rayworks.tracking import jobrun
    from rayworks.tracking.pipeline import PipelineRun
    from rayworks.tracking.runs import PARENT_TAG, for_job

    _, spec, url, _ = server
    earlier_train = for_job(spec, "p-train").run_id  # made the train output in an earlier pipeline run
    pr = PipelineRun(spec, "p")
    # The prep stage, as its job runs it: the pipeline's env in the job's runtime env.
    for k, v in pr.env("prep").items():
        monkeypatch.setenv(k, v)
    job = load_job_data({"kind": "prep", "name": "p-prep", "inputs": [{"path": str(tmp_path / "x.jsonl")}]},
                        "test", tmp_path)
    t = jobrun.start(spec, job, "prep", str(tmp_path))
    section = jobrun.results(t, {"documents_kept": 37, "dropped": {"too_short": 3}})
    mans = {"prep": {"kind": "prep", "counts": {"documents_kept": 37}, "tracking": section},
            "train": {"kind": "train", "steps": 24, "tracking": {"run_id": earlier_train,
                                                                 "model_version": {"uri": "models:/p-train/1"}}},
            "serve": {"kind": "serve", "counts": {"rows": 3}}}
    for stage, man in mans.items():
        (tmp_path / f"{stage}.json").write_text(json.dumps(man))
    jobrun.close(t, str(tmp_path / "prep.json"))
    for stage in mans:
        pr.stage(stage, {"status": "skipped" if stage == "train" else "ran", "manifest": str(tmp_path / f"{stage}.json"),
                         "manifest_sha256": "x", "seconds": None if stage == "train" else 12.5})
    out = pr.finish()
    client = mlf.client(url)
    parent = client.get_run(out["run_id"])
    assert parent.data.tags["rayworks.kind"] == "pipeline" and parent.info.status == "FINISHED"
    kids = client.search_runs([parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{out['run_id']}'")
    by_stage = {r.data.tags["rayworks.stage"]: r for r in kids}
    assert sorted(by_stage) == ["prep", "serve", "train"] and len(kids) == 3
    prep = by_stage["prep"]  # the job's own run: its params, its numbers, its manifest
    assert prep.info.run_id == section["run_id"] == out["stages"]["prep"]["run_id"]
    assert section["parent_run_id"] == out["run_id"] and prep.info.status == "FINISHED"
    assert prep.data.metrics["documents_kept"] == 37 and prep.data.metrics["dropped.too_short"] == 3
    assert prep.data.params["config.name"] == "p-prep" and prep.data.metrics["stage_seconds"] == 12.5
    assert prep.data.tags["rayworks.status"] == "ran" and prep.data.tags["rayworks.output_run_id"] == prep.info.run_id
    assert [a.path for a in client.list_artifacts(prep.info.run_id)] == ["prep.json"]
    train = by_stage["train"]  # skipped: links the earlier run, copies nothing
    assert train.data.tags["rayworks.status"] == "skipped" and train.data.tags["rayworks.output_run_id"] == earlier_train
    assert train.data.tags["rayworks.model_version"] == "models:/p-train/1" and train.data.metrics == {}
    serve = by_stage["serve"]  # no run of its own: the pipeline's nested run holds its manifest's counts
    assert serve.data.metrics == {"count.rows": 3.0, "stage_seconds": 12.5}
    assert serve.data.tags["rayworks.output_run_id"] == "" and serve.info.status == "FINISHED"


def test_serve_update_resolves_models_uris_against_the_registry(server):
    spec_path, _, url, _ = server
    proc = cli("serve", "update", "--model", "m", "--source", "models:/nothing-registered/3", "--cluster",
               str(spec_path))
    assert proc.returncode == 2 and "has no such model version" in proc.stderr and url in proc.stderr, proc.stderr
