"""FAISS mechanics of the index job, free of Ray: resolve parameters, train, add a shard, merge.

The job (rayworks.retrieval.index) runs these in Ray tasks. IVF indexes are built the way
FAISS builds indexes too large for one machine: one task trains an empty index on a
sample, each shard task adds its own vectors to a copy of it and writes that shard, and
the merge concatenates the shards' inverted lists into one on-disk file (``index.ivfdata``,
``faiss.OnDiskInvertedLists``) that is memory-mapped, never loaded, by whoever reads it.
Flat and HNSW indexes keep every vector in one process by design: use them for sets that
fit in one machine's memory.
"""

from __future__ import annotations

import os

from rayworks.config.index import (IVFDATA_FILE, default_nlist, default_nprobe)
from rayworks.errors import ConfigError


def resolve(params: dict, n: int, dim: int) -> dict:
    """The concrete index settings for ``n`` vectors of ``dim`` floats (``params``: IndexParams as a dict).

    Raises:
        ConfigError: settings the data cannot support (more lists than vectors, pq_m not dividing dim).
    """
    t = params["type"]
    if t == "auto":
        t = "flat" if n <= params["auto_flat_max_vectors"] else "ivf_flat"
    out = {"type": t, "metric": params["metric"], "dim": dim, "num_vectors": n, "seed": params["seed"]}
    if t.startswith("ivf"):
        nlist = params.get("nlist") or default_nlist(n)
        if nlist > n:
            raise ConfigError(f"index.nlist ({nlist}) exceeds the number of vectors ({n}); lower it or use "
                              "type: flat")
        out.update(nlist=nlist, nprobe=min(nlist, params.get("nprobe") or default_nprobe(nlist)),
                   train_size=min(n, max(params.get("train_sample") or 39 * nlist, nlist)))
        if t == "ivf_pq":
            m = params.get("pq_m") or max(1, dim // 4)
            if dim % m:
                raise ConfigError(f"index.pq_m ({m}) must divide the vector size ({dim})")
            out.update(pq_m=m, pq_nbits=params["pq_nbits"], refine_factor=params.get("refine_factor", 0))
            # PQ codebooks want 2^nbits * 39 training points; take them when the data has them.
            if not params.get("train_sample"):
                out["train_size"] = min(n, max(out["train_size"], 39 * (1 << params["pq_nbits"])))
    elif t == "hnsw":
        out.update(hnsw_m=params["hnsw_m"], ef_construction=params["hnsw_ef_construction"],
                   ef_search=params["hnsw_ef_search"])
    return out


def search_params(r: dict) -> dict:
    """The default search settings recorded in the manifest (what serving applies)."""
    if r["type"].startswith("ivf"):
        return {"nprobe": r["nprobe"], **({"refine_factor": r["refine_factor"]} if r.get("refine_factor") else {})}
    if r["type"] == "hnsw":
        return {"ef_search": r["ef_search"]}
    return {}


def _metric(name: str):
    import faiss

    return faiss.METRIC_INNER_PRODUCT if name == "ip" else faiss.METRIC_L2


def empty(r: dict):
    """An untrained, empty index for the resolved settings."""
    import faiss

    d, metric = r["dim"], _metric(r["metric"])
    if r["type"] == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(d) if r["metric"] == "ip" else faiss.IndexFlatL2(d))
    if r["type"] == "hnsw":
        h = faiss.IndexHNSWFlat(d, r["hnsw_m"], metric)
        h.hnsw.efConstruction = r["ef_construction"]
        return faiss.IndexIDMap2(h)
    quantizer = faiss.IndexFlatIP(d) if r["metric"] == "ip" else faiss.IndexFlatL2(d)
    if r["type"] == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, d, r["nlist"], metric)
    else:
        index = faiss.IndexIVFPQ(quantizer, d, r["nlist"], r["pq_m"], r["pq_nbits"], metric)
        index.pq.cp.seed = r["seed"]
    index.own_fields = True
    quantizer.this.disown()
    index.cp.seed = r["seed"]  # k-means initialisation: the same sample and seed give the same centroids
    return index


def sample_ids(n: int, size: int, seed: int):
    """Sorted row numbers of the deterministic training sample."""
    import numpy as np

    if size >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False)).astype(np.int64)


def train(r: dict, sample, use_gpu: bool = False):
    """An empty index trained on ``sample`` (float32 [k, dim]); flat and HNSW need no training."""
    import faiss

    index = empty(r)
    if not r["type"].startswith("ivf"):
        return index
    if use_gpu:
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
            raise ConfigError("build.use_gpu: this faiss has no GPU support here; install faiss-gpu on the workers "
                              "or set use_gpu: false")
        # Train the coarse quantizer's k-means on the GPU, then the rest on the CPU index.
        km = faiss.Kmeans(r["dim"], r["nlist"], seed=r["seed"], gpu=True,
                          spherical=False, niter=index.cp.niter)
        km.train(sample)
        index.quantizer.add(km.centroids)
        index.quantizer.is_trained = True
    index.train(sample)
    return index


def serialize(index) -> bytes:
    import faiss

    return faiss.serialize_index(index).tobytes()


def deserialize(data: bytes):
    import faiss
    import numpy as np

    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def add(index, vectors, ids) -> None:
    """Adds vectors (float32 [k, dim]) under their int64 ids."""
    import numpy as np

    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))


def merge_ivf(trained, shard_files: list[str], out_dir: str) -> str:
    """Merges IVF shard files into ``out_dir``/index.faiss + index.ivfdata (lists on disk); returns index.faiss.

    The shards are memory-mapped and their lists concatenated in shard order, so the
    merged lists hold ids in ascending order when shards hold ascending id ranges.
    """
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    os.makedirs(out_dir, exist_ok=True)
    merge_ondisk(trained, shard_files, os.path.join(out_dir, IVFDATA_FILE))
    path = os.path.join(out_dir, "index.faiss")
    faiss.write_index(trained, path)
    return path


def apply_search_params(index, params: dict) -> None:
    """Sets nprobe / efSearch on an index read back (IVF, or HNSW inside an id map)."""
    import faiss

    if "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    if "ef_search" in params:
        inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
        inner.hnsw.efSearch = int(params["ef_search"])


def fingerprint(index) -> str:
    """sha256 over what an index answers with: its vectors or codes, ids, and IVF centroids / PQ codebooks.

    The file bytes of a merged IVF index are not a stable identity (they hold the temporary
    path of the lists file and the slot layout of the merge), so the manifest records this.
    Lists are read in place (memory-mapped for on-disk lists), one at a time.
    """
    import hashlib

    import faiss
    import numpy as np

    h = hashlib.sha256()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        h.update(faiss.serialize_index(index).tobytes())
        return h.hexdigest()
    q = ivf.quantizer
    h.update(q.reconstruct_n(0, q.ntotal).tobytes())
    pq = getattr(faiss.downcast_index(ivf), "pq", None)
    if pq is not None:
        h.update(faiss.vector_to_array(pq.centroids).tobytes())
    inv = ivf.invlists
    for lst in range(ivf.nlist):
        n = inv.list_size(lst)
        h.update(np.int64(n).tobytes())
        if n:
            h.update(faiss.rev_swig_ptr(inv.get_ids(lst), n).tobytes())
            h.update(faiss.rev_swig_ptr(inv.get_codes(lst), n * inv.code_size).tobytes())
    return h.hexdigest()


def read_local(folder: str):
    """An index folder written by the job, read back (IVF lists memory-mapped from beside it)."""
    import faiss

    return faiss.read_index(os.path.join(folder, "index.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)
