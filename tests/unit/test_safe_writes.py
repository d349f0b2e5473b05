"""A failed write never costs the last good artifact, and never leaves a mix or a stray temporary.

Each writer a job uses (a prep shard, a manifest, a generate chunk and output, the export's
folder publish, the serve manifest) runs in a child process whose file-size limit
(RLIMIT_FSIZE) stops it at byte N, over an existing good artifact: the kernel then fails
the write with EFBIG exactly as a full disk fails it with ENOSPC. Afterwards the folder must
hold the old bytes, byte for byte, and no temporary. With SIGXFSZ left at its default the
kernel kills the writer mid-write instead (a crash): then the old bytes must still be there,
and ``cleanup_temporaries`` must leave nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from rayworks import storage

SHARD = """
import numpy as np
from rayworks.data.pack import write_shard
write_shard(f"{root}/prep/train/part-00000.parquet", np.random.default_rng(SEED).integers(0, 60000, 8192), 64)
"""
MANIFEST = """
from rayworks import artifacts, storage
storage.write_json(f"{root}/prep/manifest.json", artifacts.build("prep", "p", "h" * SEED, [], [], {}, pad="x" * 4000))
"""
CHUNK = """
from rayworks.generate import chunks
rows = [{"index": i, "id": str(i), "prompt": "p", "generated_text": f"{SEED}-{i}-" * 200, "finish_reason": "length",
         "num_prompt_tokens": 1, "num_output_tokens": 9, "run_id": "r"} for i in range(4)]
chunks.write_chunk(f"{root}/gen", 0, rows)
import pyarrow as pa
chunks.write_table(f"{root}/gen/output.jsonl", pa.Table.from_pylist(rows), "jsonl")
"""
EXPORT = """
import os
from rayworks import storage
src = f"{root}/../export-src-{SEED}"
os.makedirs(src, exist_ok=True)
for name in ("model.safetensors", "config.json", "manifest.json"):
    with open(f"{src}/{name}", "wb") as f:
        f.write(bytes([SEED]) * 3000)
with open(f"{src}/.rayworks", "w") as f:  # the export's marker: publish_dir replaces only what rayworks made
    f.write('{"kind": "export"}')
LIMIT()
storage.publish_dir(src, f"{root}/export")
"""
SERVE = """
from rayworks.config.jobs import load_job
from rayworks.serve import manifest as mf
job = load_job(f"{root}/../serve.yaml")
mf.write(job, {"kind": "serve", "name": "t", "inputs": [], "outputs": [], "pad": str(SEED) * 5000})
"""
WRITERS = {"shard": SHARD, "manifest": MANIFEST, "chunk": CHUNK, "export": EXPORT, "serve": SERVE}

CHILD = """
import os, resource, signal, sys
root, SEED, N, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def LIMIT():
    if N >= 0:
        if mode == "raise":
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG, like ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (N, N))
"""


def _run(root: Path, writer: str, seed: int, n: int, mode: str) -> subprocess.CompletedProcess:
    body = WRITERS[writer]
    if "LIMIT()" not in body:  # limit before the writer's first byte
        body = "LIMIT()\n" + body
    code = CHILD + textwrap.dedent(body)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-c", code, str(root), str(seed), str(n), mode],
                          capture_output=True, text=True, timeout=120, env=env)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _setup(tmp_path: Path, writer: str) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "t", "head": {"num_cpus": 2, "memory_gb": 4},
                                    "storage": {"uri": str(root)}}))
    export = tmp_path / "export"
    export.mkdir()
    (export / "config.json").write_text("{}")
    (export / "model.safetensors").write_bytes(b"")
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump({
        "kind": "serve", "name": "t", "cluster": str(spec),
        "models": [{"id": "tiny", "source": str(export), "engine": {"max_model_len": 256, "dtype": "float32"}}],
        "auth": {"api_keys_env": "RW_TEST_KEYS"}}))
    # The last good artifact, written by the same writer without a limit.
    r = _run(root, writer, 1, -1, "raise")
    assert r.returncode == 0, r.stderr
    return root


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_writer_without_a_limit_replaces_the_artifact(tmp_path, writer):
    root = _setup(tmp_path, writer)
    before = _tree(root)
    r = _run(root, writer, 2, -1, "raise")
    assert r.returncode == 0, r.stderr
    after = _tree(root)
    assert after.keys() == before.keys() and after != before  # the control: the writer does write
    assert not [k for k in after if storage.TMP_TAG in k or storage.OLD_TAG in k]


@pytest.mark.parametrize("mode", ["raise", "killed"])
@pytest.mark.parametrize("n", [0, 777])
@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_failed_write_leaves_the_old_artifact_and_no_temporary(tmp_path, writer, n, mode):
    root = _setup(tmp_path, writer)
    before = _tree(root)
    r = _run(root, writer, 2, n, mode)
    assert r.returncode != 0, "the limit did not stop the writer: raise the payload"
    if mode == "raise":
        assert "File too large" in r.stderr, r.stderr[-2000:]
    else:
        storage.cleanup_temporaries(str(root / "export") if writer == "export" else str(root))
        for sub in ("prep", "gen"):
            storage.cleanup_temporaries(str(root / sub))
    assert _tree(root) == before  # the old bytes, never a mix
    leftovers = [str(p) for p in root.rglob("*") if storage.TMP_TAG in p.name or storage.OLD_TAG in p.name]
    assert not leftovers


# ---- nothing destructive: jobs refuse output folders they must never fill or replace ----------

def _prep_job(tmp_path: Path, out: str):
    from rayworks.config.jobs import load_job_data

    (tmp_path / "docs.jsonl").write_text('{"text": "hello world"}\n')
    return load_job_data({"kind": "prep", "name": "p", "inputs": [{"path": str(tmp_path / "docs.jsonl"),
                                                                   "format": "jsonl"}],
                          "output_uri": out}, "test", tmp_path)


def _generate_job(tmp_path: Path, out: str):
    from rayworks.config.jobs import load_job_data

    (tmp_path / "model").mkdir(exist_ok=True)
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "p.jsonl").write_text('{"prompt": "hello"}\n')
    return load_job_data({"kind": "generate", "name": "g", "model": "model", "input": {"path": "p.jsonl"},
                          "output": {"uri": out, "overwrite": True}, "engine": {"max_model_len": 16},
                          "sampling": {"max_tokens": 4}}, "test", tmp_path)


@pytest.mark.parametrize("kind", ["prep", "generate"])
@pytest.mark.parametrize("out", ["/", "~", "foreign"])
def test_jobs_refuse_root_home_and_foreign_folders_before_any_work(tmp_path, kind, out):
    from rayworks.data.job import run as prep_run
    from rayworks.errors import ConfigError
    from rayworks.generate.job import run as generate_run

    if out == "foreign":
        out = str(tmp_path / "mine")
        os.makedirs(out)
        Path(out, "notes.txt").write_text("the user's own file")
    field = "output_uri" if kind == "prep" else "output.uri"
    job = _prep_job(tmp_path, out) if kind == "prep" else _generate_job(tmp_path, out)
    with pytest.raises(ConfigError, match=f"{field}: .*(filesystem root|home folder|did not create)"):
        (prep_run if kind == "prep" else generate_run)(job)
    if "mine" in out:
        assert os.listdir(out) == ["notes.txt"]


def _export_like(folder: Path) -> Path:
    """A folder as train/export.py leaves it: marker (kind export), weights, manifest."""
    from rayworks import artifacts

    folder.mkdir(parents=True)
    artifacts.mark(str(folder), "export")
    (folder / "model.safetensors").write_bytes(b"weights")
    storage.write_json(str(folder / "manifest.json"),
                       artifacts.build("export", "e", None, [], artifacts.describe_files(str(folder)), {}))
    return folder


def test_generate_refuses_an_export_folder_as_its_output_by_kind(tmp_path):
    from rayworks.errors import ConfigError
    from rayworks.generate.job import run as generate_run

    export = _export_like(tmp_path / "store" / "train" / "t" / "export")
    before = _tree(export)
    job = _generate_job(tmp_path, str(export))  # output.overwrite: true
    with pytest.raises(ConfigError, match="output.uri: .* holds an artifact of kind 'export'; a generate job"):
        generate_run(job)
    assert _tree(export) == before


@pytest.mark.parametrize("out", ["user", "cwd", "prep"])
def test_export_refuses_a_folder_it_must_not_replace_before_any_work(tmp_path, out):
    """`rayworks export CKPT OUT`: OUT is replaced whole, so a user's folder, `.` or another kind is refused."""
    from rayworks import artifacts

    work = tmp_path / "work"
    work.mkdir()
    target = {"user": tmp_path / "mine", "cwd": work, "prep": tmp_path / "prep"}[out]
    target.mkdir(exist_ok=True)
    (target / "notes.txt").write_text("the user's own file")
    if out == "prep":
        artifacts.mark(str(target), "prep")
    ckpt = tmp_path / "ckpt"  # never read: the output check comes first
    ckpt.mkdir()
    dest = "." if out == "cwd" else str(target)
    r = subprocess.run([sys.executable, "-m", "rayworks.client.cli", "export", str(ckpt), dest],
                       capture_output=True, text=True, timeout=120, cwd=work)
    assert r.returncode != 0
    why = {"user": "did not create", "cwd": "the current folder", "prep": "holds an artifact of kind 'prep'"}[out]
    assert "out: " in r.stderr + r.stdout and why in r.stderr + r.stdout, r.stderr[-2000:]
    assert (target / "notes.txt").read_text() == "the user's own file"
    assert "torch" not in r.stderr  # refused before the heavy imports, not by a failure inside them


def _stage0_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    """A ZeRO-0 checkpoint as the training loop writes it (tiny Llama), and a tokenizer folder."""
    import json

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rayworks.train.loop import CKPT_TAG, MODEL_CONFIG_FILE, STATE_FILE
    from tests.tinymodel import make_tokenizer

    tok = tmp_path / "tok"
    make_tokenizer(tok, vocab_size=300)
    cfg = {"vocab_size": 300, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
           "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 64,
           "tie_word_embeddings": False}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    ckpt = tmp_path / "ckpt"
    (ckpt / CKPT_TAG).mkdir(parents=True)
    torch.save({"module": model.state_dict()}, ckpt / CKPT_TAG / "mp_rank_00_model_states.pt")
    (ckpt / MODEL_CONFIG_FILE).write_text(json.dumps(cfg))
    (ckpt / STATE_FILE).write_text(json.dumps({"step": 3, "run_name": "t"}))
    return ckpt, tok


def test_export_marks_its_folder_and_a_rerun_replaces_it(tmp_path):
    """The published export carries the marker (kind export), so the next export may replace it."""
    from rayworks import artifacts
    from rayworks.train.export import export_checkpoint

    ckpt, tok = _stage0_checkpoint(tmp_path)
    out = tmp_path / "store" / "export"
    first = export_checkpoint(str(ckpt), str(out), tokenizer_dir=str(tok), dtype="float32")
    assert artifacts.kind_of(str(out)) == "export" and (out / artifacts.MARKER).is_file()
    assert artifacts.verify_outputs(str(out), first) == []
    (out / "stale-extra.bin").write_bytes(b"from an older export")
    second = export_checkpoint(str(ckpt), str(out), tokenizer_dir=str(tok), dtype="float32")
    assert not (out / "stale-extra.bin").exists() and artifacts.verify_outputs(str(out), second) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["export"]  # nothing set aside or staged is left


def test_serve_manifest_follows_the_artifact_contract(tmp_path):
    from rayworks import artifacts
    from rayworks.config.jobs import load_job
    from rayworks.errors import ConfigError
    from rayworks.serve import manifest as mf

    root = _setup(tmp_path, "serve")
    job = load_job(str(tmp_path / "serve.yaml"))
    m = mf.build(job, {"applications": []}, "http://127.0.0.1:8000", {"tiny": "HEALTHY"}, 3.0)
    where = mf.write(job, m)
    folder = root / "serve" / "t"
    assert where == str(folder / "manifest.json") and artifacts.kind_of(str(folder)) == "serve"
    assert (folder / artifacts.MARKER).is_file()
    got = mf.read(str(root), "t")
    assert got == m and artifacts.Manifest.model_validate(got).outputs == []
    assert got["inputs"] == [{"role": "model", "path": str(tmp_path / "export"), "sha256": None, "model": "tiny",
                              "source": str(tmp_path / "export")}]
    assert set(got["versions"]) >= {"ray", "pyarrow"} and mf.list_names(str(root)) == ["t"]
    # A folder of another kind under that name is not the serve job's to write into.
    (folder / artifacts.MARKER).write_text('{"kind": "generate"}')
    with pytest.raises(ConfigError, match="holds an artifact of kind 'generate'"):
        mf.write(job, m)


def test_prep_calls_an_output_complete_only_while_its_files_match_the_manifest(tmp_path):
    """Same config and inputs: "nothing to do" only if every listed file still has its size; else rebuild."""
    from rayworks import artifacts
    from rayworks.data.job import _target

    out = tmp_path / "prep" / "p"
    (out / "train").mkdir(parents=True)
    artifacts.mark(str(out), "prep")
    (out / "train" / "part-00000.parquet").write_bytes(b"PAR1 shard PAR1")
    inputs = [{"role": "corpus", "path": "/c.jsonl", "sha256": "00", "size_bytes": 3}]
    storage.write_json(str(out / "manifest.json"),
                       artifacts.build("prep", "p", "h1", inputs, artifacts.describe_files(str(out)), {}))
    assert _target(str(out), "h1", inputs) is None
    assert _target(str(out), "h2", inputs) == artifacts.build_dir(str(out))  # another config: beside it
    (out / "train" / "part-00000.parquet").write_bytes(b"PAR1 sha")  # truncated
    assert _target(str(out), "h1", inputs) == artifacts.build_dir(str(out))
    (out / "train" / "part-00000.parquet").unlink()
    assert _target(str(out), "h1", inputs) == artifacts.build_dir(str(out))
