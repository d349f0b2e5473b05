"""The prep job on the session's local Ray cluster, over a small real corpus.

Checks the manifest against counts computed independently here, byte-identical output
across parallelism, a real SIGKILL mid-run followed by a resume that redoes only the
unfinished shards, and bad inputs. The `rayworks submit` path of the shipped prep config is
tests/integration/test_foundation_cluster.py's (one CLI prep submit in the suite).
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

import prep_corpus

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep-corpus")
    return prep_corpus.build(root)


def _job(d: dict):
    from rayworks.config.jobs import load_job_data

    return load_job_data(d, "test", REPO)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reference_run(ray_on_cluster, corpus, tmp_path_factory):
    """One uninterrupted run (2 workers); its output is moved aside as the reference."""
    from rayworks.data.job import run

    out = tmp_path_factory.mktemp("prep-out") / "out"
    manifest = run(_job(prep_corpus.job_dict(corpus, out)))
    ref = out.parent / "ref"
    shutil.copytree(out, ref)
    return {"out": out, "ref": ref, "manifest": manifest}


def test_manifest_counts_match_an_independent_count(reference_run, corpus):
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    ref, m = reference_run["ref"], reference_run["manifest"]
    cfg = m["config"]
    want = prep_corpus.reference_counts(corpus, cfg["clean"], ref / "tokenizer")
    c = m["counts"]
    assert c["documents_read"] == want["documents_read"]
    assert c["documents_kept"] == want["documents_kept"]
    assert c["duplicates"] == want["duplicates"] >= 4  # fox, NFC cafe, 3 parquet repeats
    assert c["dropped"] == want["dropped"]
    assert c["replaced_undecodable"] == 1
    assert c["tokens"] == want["tokens"]
    assert c["sequences"] * m["seq_len"] + c["tokens_dropped_remainder"] == c["tokens"]
    assert c["tokens_dropped_remainder"] < 2 * m["seq_len"]
    assert [s["path"] for s in m["skipped_files"]] == [str(corpus["bad"] / "broken.jsonl")]
    assert "invalid JSON" in m["skipped_files"][0]["error"]
    assert [i["path"] for i in m["inputs"]][-2:] == [str(corpus["parquet"]), str(corpus["bad"] / "broken.jsonl")]

    # Shards: the declared rows and hashes, fixed-length int32 rows, ids inside the vocabulary.
    tok = AutoTokenizer.from_pretrained(str(ref / "tokenizer"), local_files_only=True)
    assert m["tokenizer"]["vocab_size"] == len(tok)
    assert tok.convert_ids_to_tokens(m["tokenizer"]["eos_token_id"]) == "<|endoftext|>"
    assert m["tokenizer"]["pad_token_id"] is not None
    assert "<|assistant|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                      add_generation_prompt=True)
    freq = Counter()
    total_rows = 0
    for split in ("train", "val"):
        rows = 0
        for s in m["splits"][split]["shards"]:
            p = ref / s["name"]
            assert hashlib.sha256(p.read_bytes()).hexdigest() == s["sha256"]
            t = pq.read_table(p)
            assert str(t.schema.field("input_ids").type) == f"fixed_size_list<element: int32>[{m['seq_len']}]"
            assert t.num_rows == s["rows"]
            flat = t.column("input_ids").combine_chunks().flatten().to_numpy()
            assert flat.max() < len(tok)
            if split == "train":
                freq.update(flat.tolist())
            rows += t.num_rows
        assert rows == m["splits"][split]["num_sequences"] > 0
        total_rows += rows
    assert total_rows == c["sequences"]
    n = sum(freq.values())
    entropy = -sum(v / n * math.log(v / n) for v in freq.values())
    assert abs(entropy - m["unigram_entropy_nats"]) < 1e-6
    assert freq[m["tokenizer"]["eos_token_id"]] > 0  # EOS between documents
    assert not (reference_run["out"] / "_work").exists()


def test_output_is_byte_identical_with_other_parallelism(reference_run, corpus):
    from rayworks.data.job import run

    out = reference_run["out"]
    shutil.rmtree(out)
    run(_job(prep_corpus.job_dict(corpus, out, execution={"num_workers": 1})))
    assert _tree(out) == _tree(reference_run["ref"])


def test_rerun_of_a_complete_output_does_nothing(reference_run, corpus, capsys):
    from rayworks.data.job import run

    out = reference_run["out"]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}
    run(_job(prep_corpus.job_dict(corpus, out, execution={"num_workers": 3})))
    assert "already complete" in capsys.readouterr().out
    assert before == {p: p.stat().st_mtime_ns for p in out.rglob("*.parquet")}


def test_killed_run_resumes_and_ends_identical(reference_run, corpus, local_cluster, tmp_path):
    out = reference_run["out"]
    shutil.rmtree(out, ignore_errors=True)
    cfg = tmp_path / "prep.yaml"
    cfg.write_text(yaml.safe_dump(prep_corpus.job_dict(corpus, out, execution={"num_workers": 1})))
    env = {**os.environ, **local_cluster.env, "RAY_ADDRESS": local_cluster.address}
    cmd = [sys.executable, str(REPO / "jobs" / "prep.py"), "--config", str(cfg)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pack = out / "_work" / "pack"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if pack.is_dir() and any(pack.glob("u-*.json")):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    log = proc.communicate()[0].decode(errors="replace")
    assert proc.returncode == -signal.SIGKILL, log[-3000:]
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"
    done = sorted(p.stem for p in pack.glob("u-*.json"))
    assert done, log[-3000:]
    n_units = reference_run["manifest"]["num_units"]
    assert len(done) < n_units
    kept = {p: p.stat().st_mtime_ns for p in (out / "train").glob("*.parquet")}
    time.sleep(0.05)

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert f"pack: {len(done)}/{n_units} units already done (resuming)" in rerun.stdout
    assert f"clean: {n_units}/{n_units} units already done" in rerun.stdout
    assert rerun.stdout.strip().splitlines()[-1] == f"[prep] manifest: {out}/manifest.json"
    for p, mtime in kept.items():  # finished shards were not redone
        assert p.stat().st_mtime_ns == mtime, p
    assert (out / "manifest.json").read_bytes() == (reference_run["ref"] / "manifest.json").read_bytes()
    assert _tree(out) == _tree(reference_run["ref"])


def test_corrupt_file_fails_with_its_name(ray_on_cluster, corpus, tmp_path):
    from rayworks.data.job import BadInputError, run

    d = prep_corpus.job_dict(corpus, tmp_path / "out", on_bad_file="fail")
    d["inputs"] = [d["inputs"][1], d["inputs"][3]]
    with pytest.raises(BadInputError, match="broken.jsonl.*invalid JSON"):
        run(_job(d))
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_missing_input_fails_before_any_work(ray_on_cluster, corpus, tmp_path):
    from rayworks.data.job import run
    from rayworks.errors import ConfigError

    d = prep_corpus.job_dict(corpus, tmp_path / "out")
    d["inputs"].append({"path": str(tmp_path / "nope" / "*.jsonl"), "format": "jsonl"})
    with pytest.raises(ConfigError, match=r"inputs\[4\]\.path.*matched no files"):
        run(_job(d))
    assert not (tmp_path / "out").exists()
