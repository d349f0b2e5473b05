"""The `index` job: a FAISS index over an embed job's vectors, and the files it leaves.

The index artifact is the contract between the index job (rayworks.retrieval) and the
serving side (rayworks.serve.retrieval), which never import each other: both read the
file names and manifest keys below.

    {out}/index.faiss           the FAISS index (ids = the embed job's row index)
    {out}/index.ivfdata         IVF only: the merged inverted lists, read on disk (FAISS
                                IO_FLAG_ONDISK_SAME_DIR), so no process holds all vectors
    {out}/meta/shard-NNNNN.parquet  id, chunk_id, doc_id, text of every vector
    {out}/vectors/from-NNNNNNNNNNNN.npy  ivf_pq with refine_factor > 0: raw vectors for re-scoring
    {out}/manifest.json         kind "index": parameters, vector count, dim, metric, the
                                default search parameters, the embed manifest's sha256,
                                and the embedding model and engine settings queries must use
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from rayworks.config.base import StrictModel
from rayworks.config.jobs import Bundle, JobBase

INDEX_FILE = "index.faiss"
IVFDATA_FILE = "index.ivfdata"
META_DIR = "meta"
# ivf_pq with refine: each build task's raw vectors (float32 .npy, rows = its contiguous id range,
# file name = first id), memory-mapped at query time to re-score the PQ candidates exactly.
VECTORS_DIR = "vectors"
META_COLUMNS = ("id", "chunk_id", "doc_id", "text")
# Manifest keys the serving side reads.
M_INDEX_TYPE, M_METRIC, M_DIM, M_NUM_VECTORS, M_SEARCH, M_EMBEDDING = (
    "index_type", "metric", "dim", "num_vectors", "search", "embedding")
# The embed artifact's committed parts (written by the embed job, read by the index job).
EMBED_PARTS_DIR = "parts"
EMBED_COLUMNS = ("index", "chunk_id", "doc_id", "text", "vector")

IndexType = Literal["auto", "flat", "ivf_flat", "ivf_pq", "hnsw"]


def default_nlist(n: int) -> int:
    """IVF lists for ``n`` vectors: ~4 sqrt(n) (FAISS's rule of thumb), at least 1, at most n / 39
    (k-means wants ~39 training points per centroid)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def default_nprobe(nlist: int) -> int:
    """Lists searched per query: 1/8 of them (at least 8), the setting the recall bench holds to >= 0.95."""
    return max(1, min(nlist, max(8, nlist // 8)))


class IndexParams(StrictModel):
    """The FAISS index to build."""

    type: IndexType = Field("auto", description="flat (exact), ivf_flat, ivf_pq (IVF with product-quantized lists), "
                                                "hnsw; auto: flat up to auto_flat_max_vectors, else ivf_flat.")
    metric: Literal["ip", "l2"] = Field("ip", description="ip (inner product: cosine on the engine's normalized "
                                                          "vectors) or l2.")
    auto_flat_max_vectors: int = Field(100_000, ge=1, description="type auto: exact search up to this many vectors.")
    nlist: int | None = Field(None, ge=1, description="IVF lists; default ~4 sqrt(N).")
    nprobe: int | None = Field(None, ge=1, description="IVF lists searched per query (the default search setting, "
                                                       "recorded in the manifest); default nlist/8, at least 8.")
    pq_m: int | None = Field(None, ge=1, description="ivf_pq: sub-quantizers (must divide the dimension); "
                                                     "default dim/4.")
    pq_nbits: int = Field(8, ge=4, le=12, description="ivf_pq: bits per sub-quantizer code.")
    refine_factor: int = Field(
        4, ge=0, description="ivf_pq: fetch k x this many candidates by their PQ codes, then re-score them with "
                             "the raw vectors (kept on disk beside the index, memory-mapped); 0: codes only "
                             "(less disk, lower recall).")
    hnsw_m: int = Field(32, ge=4, description="hnsw: neighbours per node.")
    hnsw_ef_construction: int = Field(80, ge=8, description="hnsw: candidate list size while building.")
    hnsw_ef_search: int = Field(128, ge=8, description="hnsw: candidate list size per query (default search setting).")
    train_sample: int | None = Field(
        None, ge=64, description="IVF: vectors drawn (deterministically, from seed) to train the coarse quantizer "
                                 "and PQ codebooks; the only vectors one process holds while training. Default: "
                                 "39 per list (FAISS's minimum for k-means), 39 per PQ centroid for ivf_pq.")
    seed: int = Field(0, description="Seed of the training sample and of k-means: same inputs and seed give the "
                                     "same index.")


class IndexOutput(StrictModel):
    """Where the index goes."""

    uri: str | None = Field(None, description="Output folder (local, s3://, gs://); default {storage}/index/{name}.")
    overwrite: bool = Field(True, description="Replace an earlier index of this name (the new one is built beside "
                                              "it and swapped in once complete).")


class IndexBuild(StrictModel):
    """How the build is spread over the cluster."""

    num_workers: int = Field(2, ge=1, description="Parallel Ray tasks adding vectors shard by shard (IVF, flat).")
    num_cpus_per_worker: float = Field(1, gt=0, description="CPUs per task (also FAISS's threads there).")
    use_gpu: bool = Field(False, description="Train IVF quantizers on a GPU (needs the faiss GPU build on the "
                                             "workers); the index written is the same CPU index.")


class IndexJob(JobBase):
    """Build a FAISS index over an embed job's output."""

    kind: Literal["index"] = Field("index", description="Job kind.")
    embeddings: str = Field(..., description="An embed job's output folder (relative to this file, or a URI).")
    index: IndexParams = Field(default_factory=IndexParams, description="Index type and parameters.")
    build: IndexBuild = Field(default_factory=IndexBuild, description="Parallelism of the build.")
    output: IndexOutput = Field(default_factory=IndexOutput, description="Output folder and whether to replace it.")

    path_fields = ("embeddings", "output.uri")

    @model_validator(mode="after")
    def _check(self) -> "IndexJob":
        if self.index.type in ("flat", "hnsw") and (self.index.nlist or self.index.nprobe or self.index.pq_m):
            raise ValueError(f"index.nlist/nprobe/pq_m are IVF settings; index.type is {self.index.type!r}")
        return self

    def explicit_output(self) -> str | None:
        return self.output.uri

    def resource_request(self) -> list[Bundle]:
        b = self.build
        return [Bundle(num_cpus=1, what="index driver"),
                Bundle(num_cpus=b.num_cpus_per_worker, num_gpus=1 if b.use_gpu else 0, count=b.num_workers,
                       what="index build task")]


class ServeRetrieval(StrictModel):
    """An index attached to a served app: POST /v1/retrieve and the ``rag`` option of completions/chat."""

    index: str = Field(..., description="An index job's output folder (relative to this file, or a URI). Its "
                                        "manifest names the embedding model queries are embedded with.")
    top_k: int = Field(4, ge=1, description="Chunks returned (and put into a RAG prompt) when a request gives no k.")
    max_k: int = Field(50, ge=1, description="Most chunks a request may ask for.")
    max_context_chars: int = Field(2000, ge=64, description="RAG: most characters of retrieved text put into the "
                                                            "prompt (it must still fit the model's context).")
    num_replicas: int = Field(1, ge=1, description="Retriever replicas (each loads the index and an embedding engine).")
    num_cpus_per_replica: float = Field(1, gt=0, description="CPUs per retriever replica.")
    cpu_kvcache_space_gb: int = Field(1, ge=1, description="CPU only: GiB of RAM for the embedding engine's KV cache.")

    @model_validator(mode="after")
    def _k(self) -> "ServeRetrieval":
        if self.top_k > self.max_k:
            raise ValueError(f"top_k ({self.top_k}) > max_k ({self.max_k})")
        return self
