"""The prep config, bad-input checks before any work, the corpus command (no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rayworks.config.jobs import load_job
from rayworks.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, **over) -> Path:
    d = {"kind": "prep", "name": "t", "inputs": [{"path": "corpus/*.jsonl", "format": "jsonl"}],
         "output_uri": "out", **over}
    p = tmp_path / "prep.yaml"
    p.write_text(yaml.safe_dump(d))
    return p


def test_example_config_validates_and_resolves_paths():
    job = load_job(REPO / "jobs" / "configs" / "prep.yaml")
    assert job.kind == "prep" and job.seq_len == 256
    assert job.inputs[0].path == str(REPO / "artifacts" / "corpus" / "python-docs" / "*.jsonl")
    assert job.artifact_uri().endswith("/prep/python-docs")


def test_strict_fields_and_cross_checks(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        load_job(_write(tmp_path, seq_length=5))
    with pytest.raises(ConfigError, match="min_chars"):
        load_job(_write(tmp_path, clean={"min_chars": 10, "max_chars": 5}))
    with pytest.raises(ConfigError, match="on_bad_file"):
        load_job(_write(tmp_path, on_bad_file="ignore"))


def test_manifest_config_leaves_out_execution_only(tmp_path):
    from rayworks.config.base import config_hash
    from rayworks.data.job import manifest_config

    a = load_job(_write(tmp_path, execution={"num_workers": 1}))
    b = load_job(_write(tmp_path, execution={"num_workers": 7}))
    assert "execution" not in manifest_config(a) and manifest_config(a)["name"] == "t"
    assert config_hash(manifest_config(a)) == config_hash(manifest_config(b))
    c = load_job(_write(tmp_path, seq_len=128))
    assert config_hash(manifest_config(a)) != config_hash(manifest_config(c))


def test_missing_path_and_empty_glob_fail_before_any_work(tmp_path):
    import ray

    from rayworks.data.job import run

    # Earlier tests in the same session may have connected this process to a cluster:
    # what matters is that these failures do not start (or join) one.
    was_initialized = ray.is_initialized()
    job = load_job(_write(tmp_path))
    with pytest.raises(ConfigError, match=r"inputs\[0\]\.path: the glob .*corpus/\*\.jsonl.* matched no files"):
        run(job)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.jsonl").write_text('{"text": "x"}\n')
    job = load_job(_write(tmp_path, inputs=[{"path": "corpus/*.jsonl"}, {"path": "missing.txt"}]))
    with pytest.raises(ConfigError, match=r"inputs\[1\]\.path: .*missing\.txt.* does not exist"):
        run(job)
    job = load_job(_write(tmp_path, tokenizer={"path": "no-such-tok"}))
    with pytest.raises(ConfigError, match="tokenizer.path"):
        run(job)
    assert ray.is_initialized() == was_initialized and not (tmp_path / "out").exists()


def test_preflight_checks_inputs_on_local_clusters(tmp_path):
    from rayworks.config.cluster import load_cluster_spec
    from rayworks.client.preflight import preflight

    spec = load_cluster_spec()
    with pytest.raises(ConfigError, match="matched no files"):
        preflight(load_job(_write(tmp_path)), spec)
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "a.jsonl").write_text('{"text": "x"}\n')
    preflight(load_job(_write(tmp_path)), spec)


def test_inputs_expand_in_a_fixed_order_without_repeats(tmp_path):
    from rayworks.config.prep import InputSpec
    from rayworks.data.inputs import expand_inputs

    for name in ("b.txt", "a.txt", "sub/c.txt"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    files = expand_inputs([InputSpec(path=str(tmp_path / "b.txt")), InputSpec(path=str(tmp_path))])
    assert [Path(f["path"]).name for f in files] == ["b.txt", "a.txt", "c.txt"]
    files = expand_inputs([InputSpec(path=f"{tmp_path}/**/*.txt")])
    assert [Path(f["path"]).name for f in files] == ["a.txt", "b.txt", "c.txt"]
    assert files[0]["size_bytes"] == 5


def test_corpus_command_builds_sized_jsonl(tmp_path):
    from rayworks.client.cli import main
    from rayworks.data.corpus import documents

    assert main(["corpus", "python-docs", str(tmp_path / "c"), "--size-mb", "0.3", "--shard-mb", "0.1"]) == 0
    files = sorted((tmp_path / "c").glob("python-docs-*.jsonl"))
    assert len(files) >= 3
    docs = [json.loads(ln) for f in files for ln in f.read_text().splitlines()]
    assert docs[0]["source"].startswith("pydoc_data.topics:")
    assert 0.3e6 <= sum(len(d["text"].encode()) for d in docs) < 0.3e6 + max(len(d["text"].encode()) for d in docs)
    base = sum(1 for _ in documents(None))
    grown = list(documents(size_mb=None if base == 0 else 0))
    assert grown == []
    # growing past the base repeats it with paragraphs reshuffled (mostly new documents)
    big = documents(size_mb=1e9)
    first = [next(big) for _ in range(base + 50)]
    assert first[base]["source"].endswith("#r1")
    assert sum(a["text"] != b["text"] for a, b in zip(first[:50], first[base:])) > 10
