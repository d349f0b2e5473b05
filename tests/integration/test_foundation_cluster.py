"""The local cluster and job submission, as a user runs them.

One real local Ray head (session fixture): a job submitted through `rayworks submit`
and one through Ray's own `ray job submit` CLI both SUCCEED with their output in the
logs; the Jobs API refuses a request without the token; a second `up` says the
cluster is already running; a bad token and an unreachable address are one-line errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _write_prep_job(tmp_path: Path, spec_path: Path) -> Path:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    import pydoc_data.topics as t

    for i, (k, v) in enumerate(sorted(t.topics.items())[:40]):
        (corpus / f"{i:03d}-{k}.txt").write_text(v)
    job = {"kind": "prep", "name": "foundation-prep", "cluster": str(spec_path),
           "inputs": [{"path": str(corpus / "*.txt"), "format": "text"}],
           "tokenizer": {"vocab_size": 400, "sample_mb": 1}, "seq_len": 64, "val_fraction": 0.1,
           "output_uri": str(tmp_path / "out")}
    p = tmp_path / "prep.yaml"
    p.write_text(yaml.safe_dump(job))
    return p


def test_rayworks_submit_succeeds(local_cluster, tmp_path):
    job = _write_prep_job(tmp_path, local_cluster.spec_path)
    proc = local_cluster.rayworks("submit", str(job), "--follow", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "submitted prep job" in proc.stdout and f"{local_cluster.dashboard_url}/#/jobs/" in proc.stdout
    # The job's own output came back in the streamed logs, and it wrote its manifest.
    assert "manifest" in proc.stdout.lower()
    assert (tmp_path / "out" / "manifest.json").is_file()
    listed = local_cluster.rayworks("jobs", "--cluster", str(local_cluster.spec_path), check=True).stdout
    assert "rayworks-prep-foundation-prep" in listed and "SUCCEEDED" in listed


def test_plain_ray_job_submit_cli(local_cluster):
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", local_cluster.dashboard_url, "--",
         "python", "-c", "import ray; ray.init(); print('hello from', ray.cluster_resources()['CPU'], 'CPUs')"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "hello from 8.0 CPUs" in proc.stdout
    assert "succeeded" in proc.stdout.lower()


def test_jobs_api_refuses_requests_without_token(local_cluster):
    r = requests.get(f"{local_cluster.dashboard_url}/api/jobs/", timeout=10)
    assert r.status_code == 401
    r = requests.get(f"{local_cluster.dashboard_url}/api/jobs/", timeout=10,
                     headers={"Authorization": "Bearer not-the-token"})
    assert r.status_code in (401, 403)
    from rayworks.cluster.auth import bearer_header

    r = requests.get(f"{local_cluster.dashboard_url}/api/jobs/", timeout=10, headers=bearer_header(local_cluster.spec))
    assert r.status_code == 200


def test_wrong_token_is_a_clear_error(local_cluster, tmp_path):
    env = {**os.environ, "RAY_AUTH_TOKEN": "0" * 32, "RAY_AUTH_MODE": "token"}
    proc = subprocess.run([str(BIN / "rayworks"), "jobs", "--cluster", str(local_cluster.spec_path)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "token" in err[0], proc.stderr


def test_unreachable_address_is_a_clear_error(local_cluster):
    proc = local_cluster.rayworks("jobs", "--address", "http://127.0.0.1:9")
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "cannot reach the Ray cluster at http://127.0.0.1:9" in err[0], proc.stderr


def test_up_again_and_status(local_cluster):
    again = local_cluster.rayworks("up", str(local_cluster.spec_path), check=True)
    assert "already running" in again.stdout
    st = local_cluster.rayworks("status", str(local_cluster.spec_path), check=True)
    assert "CPU=8" in st.stdout and "jobs:" in st.stdout


def test_preflight_refuses_before_submitting(local_cluster, tmp_path):
    job = _write_prep_job(tmp_path, local_cluster.spec_path)
    proc = local_cluster.rayworks("submit", str(job), "--set", "execution.num_workers=100")
    assert proc.returncode == 2
    assert "CPUs" in proc.stderr and "8" in proc.stderr, proc.stderr
    listed = local_cluster.rayworks("jobs", "--cluster", str(local_cluster.spec_path), check=True).stdout
    assert listed.count("foundation-prep") <= 1  # only the earlier, successful one
