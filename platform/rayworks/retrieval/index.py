"""The `index` job's runner: an embed job's parts -> a FAISS index artifact, in Ray tasks.

IVF (flat or PQ lists): one task trains an empty index on a deterministic sample (row
numbers drawn from ``index.seed``; only those vectors are read), ``build.num_workers``
tasks each add a contiguous range of the embed parts to a copy of it and write their
shard, and one task merges the shards' lists into ``index.ivfdata`` on disk: no process
holds all vectors. Flat and HNSW are built by one task (they hold every vector by design).
Every task also writes the chunk metadata of its parts (``meta/shard-*.parquet``), which
serving returns with each hit. The file layout is ``rayworks.config.index``'s contract.

    python -m rayworks.jobmain index --config jobs/configs/index.yaml
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time

from rayworks import artifacts, storage
from rayworks.config.base import config_hash
from rayworks.config.index import (EMBED_PARTS_DIR, INDEX_FILE, IVFDATA_FILE, M_DIM, M_EMBEDDING, M_INDEX_TYPE,
                                   M_METRIC, M_NUM_VECTORS, M_SEARCH, META_COLUMNS, META_DIR, VECTORS_DIR,
                                   IndexJob)
from rayworks.errors import ConfigError
from rayworks.retrieval import faissindex
from rayworks.retrieval.preflight import check_index_paths


def log(msg: str) -> None:
    print(f"[index] {msg}", flush=True)


def read_part(path: str, columns: list[str]):
    import pyarrow.parquet as pq

    with storage.open_input(path) as fh:
        return pq.read_table(fh, columns=columns)


def vectors_of(table, dim: int):
    """The ``vector`` column as a float32 [rows, dim] array (no copy per row)."""
    import numpy as np

    col = table.column("vector").combine_chunks()
    return np.asarray(col.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)


def _threads(num_cpus: float) -> None:
    import faiss

    faiss.omp_set_num_threads(max(1, int(num_cpus)))


def train_task(parts: list[str], r: dict, num_cpus: float, use_gpu: bool) -> bytes:
    """Reads only the sampled rows of every part and trains an empty index on them."""
    import numpy as np

    _threads(num_cpus)
    wanted = faissindex.sample_ids(r["num_vectors"], r["train_size"], r["seed"])
    picked = []
    for p in parts:
        t = read_part(p, ["index", "vector"])
        idx = t.column("index").to_numpy()
        mask = np.isin(idx, wanted, assume_unique=True)
        if mask.any():
            picked.append((idx[mask], vectors_of(t, r["dim"])[mask]))
    picked.sort(key=lambda x: int(x[0][0]))  # part order: the sample's row order does not depend on the listing
    sample = np.concatenate([v for _, v in picked]) if picked else np.zeros((0, r["dim"]), np.float32)
    return faissindex.serialize(faissindex.train(r, sample, use_gpu))


def shard_task(trained: bytes | None, parts: list[str], r: dict, out: str, shard: int, num_cpus: float) -> dict:
    """Adds this shard's parts to a copy of the trained index (IVF) and writes its metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    _threads(num_cpus)
    import numpy as np

    index = faissindex.deserialize(trained) if trained is not None else None
    metas, raw = [], []
    for p in parts:
        t = read_part(p, ["index", "chunk_id", "doc_id", "text"] + (["vector"] if index is not None else []))
        if index is not None:
            faissindex.add(index, vectors_of(t, r["dim"]), t.column("index").to_numpy())
            if r.get("refine_factor"):
                raw.append((t.column("index").to_numpy(), vectors_of(t, r["dim"])))
        metas.append(t.select(["index", "chunk_id", "doc_id", "text"]).rename_columns(list(META_COLUMNS)))
    meta = pa.concat_tables(metas) if metas else None
    if meta is not None:
        buf = io.BytesIO()
        pq.write_table(meta, buf)
        storage.write_bytes(storage.join(out, META_DIR, f"shard-{shard:05d}.parquet"), buf.getvalue())
    if raw:
        ids = np.concatenate([i for i, _ in raw])
        if not np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
            raise RuntimeError(f"shard {shard}: ids are not one contiguous range; rerun the embed job")
        buf = io.BytesIO()
        np.save(buf, np.concatenate([v for _, v in raw]))
        storage.write_bytes(storage.join(out, VECTORS_DIR, f"from-{int(ids[0]):012d}.npy"), buf.getvalue())
    res = {"shard": shard, "rows": meta.num_rows if meta is not None else 0, "file": None}
    if index is not None:
        res["file"] = storage.join(out, "shards", f"shard-{shard:05d}.faiss")
        storage.write_bytes(res["file"], faissindex.serialize(index))
    return res


def merge_task(trained: bytes, shard_files: list[str], out: str, num_cpus: float) -> tuple[int, str]:
    """Merges IVF shards into index.faiss + index.ivfdata (memory-mapped, never loaded whole)."""
    _threads(num_cpus)
    with tempfile.TemporaryDirectory(prefix="rayworks-index-") as tmp:
        local = []
        for i, f in enumerate(shard_files):
            if storage.is_remote(f):
                dst = os.path.join(tmp, f"shard-{i:05d}.faiss")
                storage.copy_file(f, dst)
                f = dst
            local.append(storage.filesystem(f)[1])
        index = faissindex.deserialize(trained)
        merged = os.path.join(tmp, "merged")
        faissindex.merge_ivf(index, local, merged)
        fp = faissindex.fingerprint(index)
        for name in (INDEX_FILE, IVFDATA_FILE):
            storage.copy_file(os.path.join(merged, name), storage.join(out, name))
        return int(index.ntotal), fp


def whole_task(parts: list[str], r: dict, out: str, num_cpus: float) -> tuple[int, str]:
    """Flat or HNSW: every vector into one index (these types hold them all by design)."""
    _threads(num_cpus)
    index = faissindex.empty(r)
    for p in parts:
        t = read_part(p, ["index", "vector"])
        faissindex.add(index, vectors_of(t, r["dim"]), t.column("index").to_numpy())
    with tempfile.TemporaryDirectory(prefix="rayworks-index-") as tmp:
        import faiss

        faiss.write_index(index, os.path.join(tmp, INDEX_FILE))
        storage.copy_file(os.path.join(tmp, INDEX_FILE), storage.join(out, INDEX_FILE))
    return int(index.ntotal), faissindex.fingerprint(index)


def split(parts: list[str], k: int) -> list[list[str]]:
    """``k`` contiguous, near-equal groups of parts (fewer when there are fewer parts)."""
    k = max(1, min(k, len(parts)))
    q, rem = divmod(len(parts), k)
    out, a = [], 0
    for i in range(k):
        b = a + q + (1 if i < rem else 0)
        out.append(parts[a:b])
        a = b
    return out


def build(job: IndexJob, r: dict, parts: list[str], out: str) -> tuple[int, str]:
    """Runs the build's Ray tasks; returns the number of vectors in the index and its fingerprint."""
    import ray

    b = job.build
    opts = {"num_cpus": b.num_cpus_per_worker, "max_retries": 2}
    groups = split(parts, b.num_workers)
    if r["type"].startswith("ivf"):
        t0 = time.time()
        trained = ray.remote(train_task).options(**opts, num_gpus=1 if b.use_gpu else 0).remote(
            parts, r, b.num_cpus_per_worker, b.use_gpu)
        shards = ray.get([ray.remote(shard_task).options(**opts).remote(trained, g, r, out, i, b.num_cpus_per_worker)
                          for i, g in enumerate(groups)])
        log(f"trained on {r['train_size']} sampled vectors, added {sum(s['rows'] for s in shards)} in "
            f"{len(shards)} shards ({time.time() - t0:.1f}s)")
        res = ray.get(ray.remote(merge_task).options(**opts).remote(trained, [s["file"] for s in shards], out,
                                                                   b.num_cpus_per_worker))
        storage.delete_dir(storage.join(out, "shards"))
        return res
    ray.get([ray.remote(shard_task).options(**opts).remote(None, g, r, out, i, b.num_cpus_per_worker)
             for i, g in enumerate(groups)])
    return ray.get(ray.remote(whole_task).options(**opts).remote(parts, r, out, b.num_cpus_per_worker))


def run(job: IndexJob) -> dict:
    """Builds the index artifact (replacing an earlier one only once complete); returns the summary."""
    import ray

    emb = check_index_paths(job)
    emb_manifest = artifacts.find_manifest(job.embeddings)
    emb_dir = storage.parent_of(emb_manifest)
    parts = storage.list_files(storage.join(emb_dir, emb.get("parts", EMBED_PARTS_DIR)), ".parquet")
    n, dim = int(emb["num_chunks"]), int(emb["dim"])
    r = faissindex.resolve(job.index.model_dump(), n, dim)
    final_out = job.artifact_uri()
    artifacts.check_output_dir(final_out, artifacts.storage_root(job), "output.uri", kind="index")
    storage.cleanup_temporaries(final_out)
    artifacts.discard_build(final_out)
    out = final_out
    if storage.list_files(final_out, recursive=True):
        if not job.output.overwrite:
            raise ConfigError(f"output.uri {final_out} already holds an index; set output.overwrite: true to "
                              "replace it or use another name")
        out = artifacts.build_dir(final_out)
    artifacts.mark(out, "index")
    log(f"{n} vectors of {dim} floats from {emb_dir} -> {r['type']} index in {final_out}")
    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    t0 = time.time()
    total, fp = build(job, r, parts, out)
    took = time.time() - t0
    if total != n:
        raise RuntimeError(f"the index holds {total} vectors but the embeddings have {n}; rerun the job")
    summary = {"num_vectors": total, "build_s": took, "num_parts": len(parts), "fingerprint": fp, **r}
    cfg = job.model_dump(mode="json")
    manifest = artifacts.build(
        "index", job.name, config_hash(cfg),
        [{"role": "embeddings", "path": emb_manifest, "sha256": storage.sha256_file(emb_manifest)}],
        artifacts.describe_files(out), artifacts.versions(), config=cfg,
        **{M_INDEX_TYPE: r["type"], M_METRIC: r["metric"], M_DIM: dim, M_NUM_VECTORS: total,
           M_SEARCH: faissindex.search_params(r), M_EMBEDDING: emb.get("embedding") or {}},
        params=r, fingerprint=fp, summary=summary, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    storage.write_json(storage.join(out, artifacts.MANIFEST), manifest)
    if out != final_out:
        storage.publish_dir(out, final_out)
    log(f"done: {total} vectors, {r['type']} {faissindex.search_params(r)} in {took:.1f}s; manifest "
        f"{storage.join(final_out, artifacts.MANIFEST)}")
    print("RAYWORKS_INDEX_SUMMARY " + json.dumps(summary), flush=True)
    return summary
