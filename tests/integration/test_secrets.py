"""A canary secret through real jobs: every process that needs it sees it, no file or API response holds it.

The spec lists the canary under runtime_env.secret_env_vars. A probe job submitted with
rayworks' own runtime env (`rayworks.client.submit.runtime_env`) proves, by sha256, that its
driver, a task and an actor saw the right value; a real prep job goes through
`rayworks submit`. (A real serve deploy's API key, passed the same way, is searched for by
tests/integration/test_serve_app.py, whose app already takes its key from a secret env var:
one engine start fewer.) Then every file under the Ray session directory (the runtime-env agent's and every worker's logs
included), the storage, and every Jobs API answer (job list, job info, logs) is searched
for the canary: it appears nowhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import yaml

from secretscan import files_holding, jobs_api_answers

pytestmark = pytest.mark.integration

NAME = "RW_CANARY_SECRET"
CANARY = "rwcanary-" + os.urandom(16).hex()

PROBE = '''
import hashlib, json, os, sys
from pathlib import Path

from rayworks.secrets import unseal_env

unseal_env()  # what rayworks.jobmain does first in every job's driver
import ray

ray.init()
name, out = sys.argv[1], Path(sys.argv[2])
digest = lambda: hashlib.sha256(os.environ.get(name, "").encode()).hexdigest()

@ray.remote
def task():
    return digest()

@ray.remote
class Actor:
    def seen(self):
        return digest()

proof = {"driver": digest(), "task": ray.get(task.remote()), "actor": ray.get(Actor.remote().seen.remote())}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(proof))
print("probe done")
'''


@pytest.fixture(scope="module")
def canary_spec(local_cluster, tmp_path_factory):
    """The session spec with the canary listed as a secret, and the canary in this shell."""
    root = tmp_path_factory.mktemp("secrets")
    spec = yaml.safe_load(local_cluster.spec_path.read_text())
    spec["runtime_env"]["secret_env_vars"] = [NAME]
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    os.environ[NAME] = CANARY
    yield path
    os.environ.pop(NAME, None)


def _job_ids(local_cluster) -> list[str]:
    from rayworks.client.submit import client

    return [j.submission_id for j in client(local_cluster.spec).list_jobs() if j.submission_id]


def test_probe_job_sees_the_secret_in_driver_task_and_actor(local_cluster, canary_spec, tmp_path):
    from rayworks.config.cluster import load_cluster_spec
    from rayworks.config.jobs import load_job_data
    from rayworks.client.submit import client, runtime_env, wait_for

    spec = load_cluster_spec(canary_spec)
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "probe.py").write_text(PROBE)
    job = load_job_data({"kind": "prep", "name": "probe", "inputs": [{"path": str(wd / "x.jsonl")}]}, "t", wd)
    env = runtime_env(job, spec, wd)
    assert CANARY not in json.dumps(env)
    out = local_cluster.storage / "secrets-probe" / "proof.json"
    c = client(spec)
    job_id = c.submit_job(entrypoint=f"python probe.py {NAME} {out}", runtime_env=env,
                          submission_id=f"rw-secrets-probe-{os.urandom(3).hex()}")
    wait_for(c, job_id, quiet=True, timeout_s=600)
    want = hashlib.sha256(CANARY.encode()).hexdigest()
    assert json.loads(out.read_text()) == {"driver": want, "task": want, "actor": want}


def test_prep_job_with_a_secret_runs_through_rayworks_submit(local_cluster, canary_spec, tmp_path):
    from rayworks.data.corpus import build_python_docs

    build_python_docs(tmp_path / "docs", size_mb=0.2, shard_mb=0.1)
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(yaml.safe_dump({
        "kind": "prep", "name": "secrets-prep", "inputs": [{"path": "docs/*.jsonl", "format": "jsonl"}],
        "tokenizer": {"vocab_size": 300, "sample_mb": 0.1}, "seq_len": 32, "unit_mb": 0.1,
        "execution": {"num_workers": 2}}))
    proc = local_cluster.rayworks("submit", str(cfg), "--cluster", str(canary_spec), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (local_cluster.storage / "prep" / "secrets-prep" / "manifest.json").is_file()


def test_the_canary_appears_nowhere(local_cluster, canary_spec):
    needle = CANARY.encode()
    assert len(_job_ids(local_cluster)) >= 2
    temp = Path(local_cluster.spec.local.temp_dir)
    # The runtime-env agent logged our runtime envs (the sealed form): the search looks where Ray writes.
    assert files_holding(temp, b"RAYWORKS_SEALED_ENV"), f"no runtime env logged under {temp}?"
    assert files_holding(temp, needle) == []
    assert files_holding(local_cluster.storage, needle) == []
    assert files_holding(canary_spec.parent, needle) == []
    answers = jobs_api_answers(local_cluster)
    assert any("RAYWORKS_SEALED_ENV" in a for a in answers)  # the runtime env is there, sealed
    assert not [a[:200] for a in answers if CANARY in a]
