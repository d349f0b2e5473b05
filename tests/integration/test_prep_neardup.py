"""The prep job's near-duplicate stage on the session's Ray cluster, over planted near-duplicates.

One reference run (2 workers) checked against the same functions run in memory, one run
with 1 worker that must give byte-identical shards and manifest, and a real SIGKILL inside
the near-dup stage followed by a resume that ends identical. Precision and recall are the
unit tests' (tests/unit/test_neardup.py): they need no cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import prep_corpus
from tests.neardup_corpus import planted

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
NEAR = {"shingle": "word", "shingle_size": 5, "num_perm": 64, "bands": 8, "rows": 8, "threshold": 0.8,
        "seed": 3, "verify": True}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("neardup-corpus")
    texts, pairs = planted(NEAR, per_level=12)
    texts = texts + texts[:5]  # exact copies: exact dedup removes them before near-dup sees them
    with open(root / "docs.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return {"root": root, "texts": texts, "pairs": pairs}


def _job_dict(corpus, out: Path, workers: int) -> dict:
    return {"kind": "prep", "name": "neardup", "inputs": [{"path": str(corpus["root"] / "docs.jsonl"),
                                                           "format": "jsonl"}],
            "output_uri": str(out), "clean": {"min_chars": 3, "max_chars": 20000},
            "near_dup": NEAR, "tokenizer": {"vocab_size": 320, "sample_mb": 0.1}, "seq_len": 64,
            "val_fraction": 0.1, "unit_mb": 0.1, "execution": {"num_workers": workers},
            "tracking": False}  # manifests are compared byte for byte: no MLflow run id in them


def _job(d: dict):
    from rayworks.config.jobs import load_job_data

    return load_job_data(d, "test", REPO)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference(ray_on_cluster, corpus, tmp_path_factory):
    from rayworks.data.job import run

    out = tmp_path_factory.mktemp("neardup-out") / "out"
    manifest = run(_job(_job_dict(corpus, out, 2)))
    ref = out.parent / "ref"
    shutil.copytree(out, ref)
    return {"out": out, "ref": ref, "manifest": manifest}


def test_manifest_counts_match_the_in_memory_result(reference, corpus):
    from rayworks.data.neardup import find_near_duplicates

    m = reference["manifest"]
    cleaned, seen = [], set()
    for t in corpus["texts"]:
        s, _ = prep_corpus.clean(t, {"min_chars": 3, "max_chars": 20000})
        if s is not None and s not in seen:
            seen.add(s)
            cleaned.append(s)
    removed, clusters, stats = find_near_duplicates(cleaned, NEAR)
    c = m["counts"]
    assert c["duplicates"] == 5
    assert c["near_duplicates"] == m["near_dup"]["documents_removed"] == len(removed) >= 24
    assert m["near_dup"]["clusters"] == clusters
    assert m["near_dup"]["similar_pairs"] == stats["verified_pairs"]
    assert m["near_dup"]["parameters"] == NEAR and m["config"]["near_dup"] == NEAR
    assert c["documents_kept"] == c["documents_read"] - sum(c["dropped"].values()) - 5 - len(removed)
    assert m["num_units"] >= 4


def test_output_is_byte_identical_with_one_worker(reference, corpus):
    from rayworks.data.job import run

    out = reference["out"]
    shutil.rmtree(out)
    run(_job(_job_dict(corpus, out, 1)))
    assert _tree(out) == _tree(reference["ref"])


def test_kill_inside_the_near_dup_stage_resumes_and_ends_identical(reference, corpus, local_cluster, tmp_path):
    out = reference["out"]
    shutil.rmtree(out, ignore_errors=True)
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(yaml.safe_dump(_job_dict(corpus, out, 1)))
    env = {**os.environ, **local_cluster.env, "RAY_ADDRESS": local_cluster.address}
    cmd = [sys.executable, str(REPO / "jobs" / "prep.py"), "--config", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    sig = out / "_work" / "neardup" / "sig"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if sig.is_dir() and any(sig.glob("u-*.json")):
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, log[-3000:]
    assert not (out / "_work" / "neardup" / "components.json").exists(), "killed after the near-dup stage"
    done = len(list(sig.glob("u-*.json")))
    n = reference["manifest"]["num_units"]
    assert 1 <= done <= n, log[-3000:]

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"neardup_sig: {done}/{n} units already done (resuming)" in rerun.stdout
    assert (out / "manifest.json").read_bytes() == (reference["ref"] / "manifest.json").read_bytes()
    assert _tree(out) == _tree(reference["ref"])
