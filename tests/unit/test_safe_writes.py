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
