"""`rayworks lineage` walks manifests generically and verifies every file they list.

The chain here is written with the same helpers the jobs use (rayworks.artifacts):
corpus file -> prep (shard, tokenizer) -> export (weights; inputs: checkpoint files, prep)
-> generate output. Each test breaks one link and expects a non-zero exit naming the file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rayworks import artifacts, storage

REPO = Path(__file__).resolve().parents[2]


def _write_manifest(folder: Path, kind: str, inputs: list[dict], names=(artifacts.MANIFEST,)) -> Path:
    artifacts.mark(str(folder), kind)
    m = artifacts.build(kind, f"{kind}-t", "cafe", inputs, artifacts.describe_files(str(folder)), artifacts.versions())
    for n in names:
        storage.write_json(str(folder / n), m)
    return folder / names[-1]


@pytest.fixture
def chain(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "hello"}\n')
    prep = tmp_path / "store" / "prep" / "p"
    (prep / "train").mkdir(parents=True)
    (prep / "train" / "part-00000.parquet").write_bytes(b"PAR1 shard PAR1")
    (prep / "tokenizer").mkdir()
    (prep / "tokenizer" / "tokenizer.json").write_text("{}")
    _write_manifest(prep, "prep", [{"role": "corpus", "path": str(corpus), "sha256": storage.sha256_file(str(corpus))}])
    ckpt = tmp_path / "store" / "train" / "t" / "ray_train" / "checkpoint_000004"
    (ckpt / "global_step4").mkdir(parents=True)
    (ckpt / "global_step4" / "mp_rank_00_model_states.pt").write_bytes(b"weights+optimizer")
    (ckpt / "rayworks_state.json").write_text('{"step": 4}')
    export = tmp_path / "store" / "train" / "t" / "export"
    export.mkdir()
    (export / "model.safetensors").write_bytes(b"safetensors-bytes")
    (export / "config.json").write_text('{"model_type": "llama"}')
    # As train/export.py writes it: the common manifest under both names (older readers use the second).
    _write_manifest(export, "export",
                    [artifacts.input_ref("checkpoint", str(ckpt)), artifacts.input_ref("prep", str(prep))],
                    names=("rayworks_export.json", "manifest.json"))
    gen = tmp_path / "store" / "generate" / "g"
    gen.mkdir(parents=True)
    (gen / "output.parquet").write_bytes(b"rows")
    _write_manifest(gen, "generate", [artifacts.input_ref("model", str(export))])
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "t", "head": {"num_cpus": 2, "memory_gb": 4},
                                    "storage": {"uri": str(tmp_path / "store")}}))
    return {"corpus": corpus, "prep": prep, "ckpt": ckpt, "export": export, "gen": gen, "spec": spec}


def lineage(c, target) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rayworks.client.cli", "lineage", str(target), "--cluster", str(c["spec"])],
                          capture_output=True, text=True, timeout=120, cwd=REPO)


def test_intact_chain_walks_from_generate_through_the_export_to_the_corpus(chain):
    r = lineage(chain, chain["gen"])
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    kinds = [ln.split()[1] if ln.strip().startswith("<-") else ln.split()[0] for ln in lines if "sha256:" in ln]
    # The export is found by its manifest (not its config.json), then its checkpoint and prep, then the corpus.
    assert kinds == ["generate", "export", "checkpoint", "prep", "file"], r.stdout
    assert all("[ok]" in ln for ln in lines if "sha256:" in ln)
    assert str(chain["export"] / "manifest.json") in r.stdout and str(chain["corpus"]) in r.stdout


def _fails_naming(chain, target, name: str, status: str):
    r = lineage(chain, target)
    assert r.returncode == 1, r.stdout + r.stderr
    bad = [ln for ln in r.stdout.splitlines() if name in ln and ("!" in ln or status in ln)]
    assert bad, r.stdout
    assert status in r.stdout
    return r


def test_one_byte_of_a_prep_shard_overwritten(chain):
    shard = chain["prep"] / "train" / "part-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF
    shard.write_bytes(bytes(data))
    r = _fails_naming(chain, chain["prep"], str(shard), "CHANGED (1 files)")
    assert "sha256 differs" in r.stdout
    _fails_naming(chain, chain["gen"], str(shard), "CHANGED")  # and from the far end of the chain


def test_a_changed_input_file(chain):
    chain["corpus"].write_text('{"text": "hellO"}\n')
    _fails_naming(chain, chain["gen"], str(chain["corpus"]), "MISMATCH")


def test_a_missing_checkpoint_file(chain):
    f = chain["ckpt"] / "global_step4" / "mp_rank_00_model_states.pt"
    f.unlink()
    _fails_naming(chain, chain["gen"], f"{f}: missing", "CHANGED")


def test_changed_export_weights(chain):
    (chain["export"] / "model.safetensors").write_bytes(b"safetensors-byteZ")
    _fails_naming(chain, chain["gen"], str(chain["export"] / "model.safetensors"), "CHANGED")


def test_a_deleted_export_weight_file(chain):
    (chain["export"] / "model.safetensors").unlink()
    _fails_naming(chain, chain["export"], f"{chain['export'] / 'model.safetensors'}: missing", "CHANGED")


def test_a_truncated_manifest(chain):
    m = chain["prep"] / "manifest.json"
    m.write_bytes(m.read_bytes()[:40])
    r = _fails_naming(chain, chain["prep"], str(m), "INVALID")
    assert "invalid JSON" in r.stdout
    # Reached from the export, the truncated prep manifest also fails its recorded sha256.
    r = _fails_naming(chain, chain["export"], str(m), "INVALID")
    assert f"{m}: sha256 differs from the recorded" in r.stdout


def test_a_manifest_reached_twice_is_verified_once(chain, monkeypatch):
    """Two served models from one export: the export's files are hashed once, its second node says so."""
    from rayworks.client import lineage as lin

    serve = chain["gen"].parent.parent / "serve" / "s"
    serve.mkdir(parents=True)
    ref = artifacts.input_ref("model", str(chain["export"]))
    _write_manifest(serve, "serve", [{**ref, "model": "a"}, {**ref, "model": "b"}])
    weights = str(chain["export"] / "model.safetensors")
    hashed = []
    real = storage.sha256_file

    def spy(path, *a, **kw):  # counts, then hashes for real
        hashed.append(path)
        return real(path, *a, **kw)

    monkeypatch.setattr(storage, "sha256_file", spy)
    nodes = lin.chain(str(serve))
    assert hashed.count(weights) == 1
    exports = [n for n in nodes if n["kind"] == "export"]
    assert len(exports) == 2 and [n["status"] for n in exports] == ["ok", "ok"]
    assert exports[1]["facts"] == "(verified above)"
