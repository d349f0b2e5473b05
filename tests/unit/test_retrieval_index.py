"""The index job's FAISS mechanics without Ray, and the serving side reading what they write.

The build functions of rayworks.retrieval.index (train on a seeded sample, add shard by
shard, merge IVF lists on disk) run here as plain calls on synthetic clustered vectors; the
artifact they leave is then loaded by rayworks.serve.retrieval.LoadedIndex, the other side
of the file contract. Checks: recall@10 against exact search at the default search
settings, same inputs -> same index and results, relocation (the on-disk lists are found
beside the index file wherever the folder moves), ids and metadata of hits.
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayworks import storage
from rayworks.config.index import IVFDATA_FILE, IndexParams, default_nlist, default_nprobe
from rayworks.retrieval import faissindex
from rayworks.retrieval import index as ix
from rayworks.retrieval.embed import part_schema

DIM, N, PER_PART = 32, 6000, 1000


def clustered(n: int, dim: int, seed: int, centers: int = 60) -> np.ndarray:
    """Unit vectors around random centres: the shape real embeddings have (not uniform noise)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centers, dim))
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_parts(folder, vecs: np.ndarray) -> list[str]:
    paths = []
    for k in range(0, len(vecs), PER_PART):
        rows = [{"index": i, "chunk_id": f"d{i // 3}#{i % 3}", "doc_id": f"d{i // 3}", "text": f"text {i}",
                 "vector": vecs[i].tolist()} for i in range(k, min(k + PER_PART, len(vecs)))]
        p = folder / f"part-{k // PER_PART:06d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=part_schema(DIM)), p)
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    vecs = clustered(N, DIM, seed=1)
    return {"parts": write_parts(root, vecs), "vecs": vecs, "queries": clustered(200, DIM, seed=2)}


def build(parts: list[str], out: str, params: dict, workers: int = 3) -> dict:
    """What the index job's tasks do, called in order in this process."""
    r = faissindex.resolve(params, N, DIM)
    groups = ix.split(parts, workers)
    if r["type"].startswith("ivf"):
        trained = ix.train_task(parts, r, 1, False)
        shards = [ix.shard_task(trained, g, r, out, i, 1) for i, g in enumerate(groups)]
        assert sum(s["rows"] for s in shards) == N
        n, fp = ix.merge_task(trained, [s["file"] for s in shards], out, 1)
        storage.delete_dir(storage.join(out, "shards"))
    else:
        for i, g in enumerate(groups):
            ix.shard_task(None, g, r, out, i, 1)
        n, fp = ix.whole_task(parts, r, out, 1)
    assert n == N and fp == faissindex.fingerprint(faissindex.read_local(out))  # the file holds what was built
    storage.write_json(storage.join(out, "manifest.json"), {
        "kind": "index", "index_type": r["type"], "metric": r["metric"], "dim": DIM, "num_vectors": N,
        "search": faissindex.search_params(r), "embedding": {}})
    return r


def exact_top(vecs, queries, k=10):
    return np.argsort(-(queries @ vecs.T), axis=1)[:, :k]


def recall(got: list[list[dict]], want: np.ndarray) -> float:
    return float(np.mean([len({h["id"] for h in g} & set(w.tolist())) / len(w) for g, w in zip(got, want)]))


@pytest.mark.parametrize("kind", ["ivf_flat", "hnsw", "flat"])
def test_recall_at_default_search_settings(data, tmp_path, kind):
    from rayworks.serve.retrieval import LoadedIndex

    params = IndexParams(type=kind).model_dump()
    r = build(data["parts"], str(tmp_path / "idx"), params)
    if kind == "ivf_flat":
        assert (tmp_path / "idx" / IVFDATA_FILE).stat().st_size > 0 and r["nlist"] == default_nlist(N)
        assert r["nprobe"] == default_nprobe(r["nlist"]) < r["nlist"]  # approximate: not every list searched
    loaded = LoadedIndex(str(tmp_path / "idx"))
    got = loaded.search(data["queries"], 10)
    rec = recall(got, exact_top(data["vecs"], data["queries"]))
    assert rec >= (0.999 if kind == "flat" else 0.95), (kind, rec)
    hit = got[0][0]  # metadata travels with the id
    assert hit["rank"] == 1 and hit["text"] == f"text {hit['id']}" and hit["chunk_id"].startswith(hit["doc_id"])


@pytest.mark.parametrize("refine", [4, 0])
def test_ivf_pq_recall_with_and_without_refine(data, tmp_path, refine):
    """PQ codes alone lose recall; re-scoring k x 4 candidates with the raw vectors (on disk,
    memory-mapped) brings it back to the target at the default settings."""
    from rayworks.serve.retrieval import LoadedIndex

    params = IndexParams(type="ivf_pq", refine_factor=refine).model_dump()
    build(data["parts"], str(tmp_path / "pq"), params)
    assert (tmp_path / "pq" / "vectors").is_dir() == bool(refine)
    loaded = LoadedIndex(str(tmp_path / "pq"))
    got = loaded.search(data["queries"], 10)
    rec = recall(got, exact_top(data["vecs"], data["queries"]))
    if refine:
        assert rec >= 0.95, rec
        assert abs(got[0][0]["score"] - float(data["queries"][0] @ data["vecs"][got[0][0]["id"]])) < 1e-5
    else:
        assert rec < 0.95  # why refine is the default
    probe = [5, 1500, 4321, 5999]
    assert all(i in {h["id"] for h in g} for i, g in zip(probe, loaded.search(data["vecs"][probe], 10)))


def test_same_inputs_same_index_and_results_relocated(data, tmp_path):
    """Two builds (different shard counts) give the same index (centroids, lists, ids) and results,
    and the folder still works after it moves (the lists are found beside index.faiss)."""
    from rayworks.serve.retrieval import LoadedIndex

    params = IndexParams(type="ivf_flat", seed=7).model_dump()
    build(data["parts"], str(tmp_path / "a"), params, workers=3)
    build(data["parts"], str(tmp_path / "b"), params, workers=2)
    fp = faissindex.fingerprint(faissindex.read_local(str(tmp_path / "a")))
    assert fp == faissindex.fingerprint(faissindex.read_local(str(tmp_path / "b")))
    shutil.move(str(tmp_path / "b"), str(tmp_path / "moved"))
    ra = LoadedIndex(str(tmp_path / "a")).search(data["queries"], 10)
    rb = LoadedIndex(str(tmp_path / "moved")).search(data["queries"], 10)
    assert [[h["id"] for h in q] for q in ra] == [[h["id"] for h in q] for q in rb]
    # Another seed trains other centroids: the seed is what pins the index, not chance.
    build(data["parts"], str(tmp_path / "c"), {**params, "seed": 8}, workers=3)
    assert faissindex.fingerprint(faissindex.read_local(str(tmp_path / "c"))) != fp


def test_training_sample_is_seeded_and_bounded():
    a, b = faissindex.sample_ids(100_000, 5000, 3), faissindex.sample_ids(100_000, 5000, 3)
    assert np.array_equal(a, b) and len(np.unique(a)) == 5000 and a.max() < 100_000
    assert not np.array_equal(a, faissindex.sample_ids(100_000, 5000, 4))
    r = faissindex.resolve(IndexParams(type="ivf_flat", train_sample=2000).model_dump(), 1_000_000, 64)
    assert r["train_size"] == 4000 == r["nlist"]  # at least one point per list, else the sample size
    r = faissindex.resolve(IndexParams(type="ivf_flat").model_dump(), 1_000_000, 64)
    assert r["train_size"] == 39 * 4000  # default: FAISS's 39 points per list, far below all vectors


def test_resolve_refuses_what_the_data_cannot_support():
    from rayworks.errors import ConfigError

    with pytest.raises(ConfigError, match="divide"):
        faissindex.resolve(IndexParams(type="ivf_pq", pq_m=5).model_dump(), 10_000, 32)
    with pytest.raises(ConfigError, match="exceeds"):
        faissindex.resolve(IndexParams(type="ivf_flat", nlist=500).model_dump(), 100, 32)
    assert faissindex.resolve(IndexParams().model_dump(), 100, 32)["type"] == "flat"
    assert faissindex.resolve(IndexParams().model_dump(), 200_000, 32)["type"] == "ivf_flat"


def test_split_is_contiguous_and_complete():
    parts = [f"p{i}" for i in range(7)]
    groups = ix.split(parts, 3)
    assert [len(g) for g in groups] == [3, 2, 2] and sum(groups, []) == parts
    assert ix.split(parts[:2], 5) == [["p0"], ["p1"]]
