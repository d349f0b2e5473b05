"""The local cluster and job submission, as a user runs them.

One real local Ray head (session fixture): the shipped prep config submitted through
`rayworks submit --follow` SUCCEEDS with its output streamed and in the logs (the one
CLI prep submit of the suite; tests/integration/test_prep_job.py runs the job library
directly; README's plain `ray job submit` command is tests/integration/test_packaging.py's);
the Jobs API refuses a request without the token; a second `up` says the
cluster is already running; a bad token, an unreachable address and an impossible
resource request are one-line errors that submit nothing.
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
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def job_ids(local_cluster) -> dict[str, str]:
    """{submission id: status} from `rayworks jobs`."""
    out = local_cluster.rayworks("jobs", "--cluster", str(local_cluster.spec_path), check=True, timeout=120).stdout
    return {ln.split()[0]: ln.split()[1].split(".")[-1] for ln in out.splitlines() if ln.strip()}


def _write_corpus(root: Path) -> Path:
    import pydoc_data.topics as t

    root.mkdir()
    with open(root / "docs.jsonl", "w") as f:
        for _, v in sorted(t.topics.items())[:40]:
            f.write(json.dumps({"text": v}) + "\n")
    return root


def _write_prep_job(tmp_path: Path, spec_path: Path) -> Path:
    corpus = _write_corpus(tmp_path / "corpus")
    job = {"kind": "prep", "name": "foundation-prep", "cluster": str(spec_path),
           "inputs": [{"path": str(corpus / "*.jsonl"), "format": "jsonl"}],
           "tokenizer": {"vocab_size": 400, "sample_mb": 1}, "seq_len": 64, "val_fraction": 0.1,
           "output_uri": str(tmp_path / "out")}
    p = tmp_path / "prep.yaml"
    p.write_text(yaml.safe_dump(job))
    return p


def test_rayworks_submit_of_the_shipped_prep_config(local_cluster, tmp_path):
    """`rayworks submit jobs/configs/prep.yaml --follow` (README), inputs and sizes overridden."""
    from rayworks.data.manifest import read_manifest, shard_uris, tokenizer_dir

    corpus = _write_corpus(tmp_path / "corpus")
    before = job_ids(local_cluster)
    inputs = json.dumps([{"path": f"{corpus}/*.jsonl", "format": "jsonl"}])
    proc = local_cluster.rayworks(
        "submit", "jobs/configs/prep.yaml", "--cluster", str(local_cluster.spec_path), "--follow",
        "--set", f"inputs={inputs}", "--set", "name=submit-test", "--set", "tokenizer.vocab_size=300",
        "--set", "tokenizer.sample_mb=0.1", "--set", "seq_len=32", "--set", "unit_mb=0.2", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = re.search(r"submitted prep job (\S+)", proc.stdout).group(1)
    assert f"{local_cluster.dashboard_url}/#/jobs/{job_id}" in proc.stdout
    # Default output under the spec's storage; the job's own last line came back in the streamed logs.
    out = local_cluster.storage / "prep" / "submit-test"
    assert f"[prep] manifest: {out}/manifest.json" in proc.stdout
    m = read_manifest(str(out))
    assert m["name"] == "submit-test" and m["seq_len"] == 32 and m["counts"]["sequences"] > 0
    uris = shard_uris(str(out / "manifest.json"), "train")
    assert uris and all(Path(u).is_file() for u in uris)
    assert Path(tokenizer_dir(str(out)), "tokenizer.json").is_file()
    logs = local_cluster.rayworks("logs", job_id, "--cluster", str(local_cluster.spec_path), check=True).stdout
    assert f"[prep] manifest: {out}/manifest.json" in logs
    after = job_ids(local_cluster)
    assert set(after) - set(before) == {job_id} and after[job_id] == "SUCCEEDED", (before, after)


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
    proc = local_cluster.rayworks("jobs", "--address", "http://127.0.0.1:9", timeout=120)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and "nothing listens on http://127.0.0.1:9" in err[0] and "rayworks up" in err[0], proc.stderr


def test_up_again_and_status(local_cluster):
    again = local_cluster.rayworks("up", str(local_cluster.spec_path), check=True, timeout=300)
    assert "already running" in again.stdout
    st = local_cluster.rayworks("status", str(local_cluster.spec_path), check=True, timeout=120)
    assert "CPU=8" in st.stdout and "jobs:" in st.stdout


def test_preflight_refuses_before_submitting(local_cluster, tmp_path):
    job = _write_prep_job(tmp_path, local_cluster.spec_path)
    before = job_ids(local_cluster)
    proc = local_cluster.rayworks("submit", str(job), "--set", "execution.num_workers=100", timeout=120)
    assert proc.returncode == 2
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 1, proc.stderr
    # The request (100 workers) and the spec's 8 CPUs, both named.
    assert re.search(r"\b100\b", err[0]) and re.search(r"(tops out at|has at most) 8\b", err[0]), err[0]
    assert job_ids(local_cluster) == before  # nothing was submitted
