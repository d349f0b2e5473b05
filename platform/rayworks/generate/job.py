"""The generate job's runner: prompts -> vLLM engines on Ray Data -> chunks -> ordered output.

    python jobs/generate.py --config jobs/configs/generate.yaml     # or: rayworks submit ...

Steps: check that the model and input exist (before any engine starts), read and vet
the prompts (bad rows -> errors file), skip the chunks an earlier run committed, run
the rest through the engines, commit each chunk as soon as all its rows are back,
then assemble the output in input order and write the manifest.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections import defaultdict

from rayworks import artifacts, storage
from rayworks.config.base import config_hash
from rayworks.config.generate import GenerateJob
from rayworks.generate import chunks
from rayworks.generate.preflight import check_paths
from rayworks.generate.prompts import Prompts, load_prompts, load_tokenizer
from rayworks.tracking import jobrun


def log(msg: str) -> None:
    print(f"[generate] {msg}", flush=True)


class Progress:
    """Progress lines and the job's metrics (prompts/s, output tokens/s)."""

    def __init__(self, job: GenerateJob, total: int, every_s: float = 5.0):
        from rayworks import metrics as m

        self.tags = m.tags("generate", job.name)
        self.total, self.every_s = total, every_s
        self.done = self.tokens = 0
        self.t0 = self.t_last = time.time()
        self.prompts = m.counter("rayworks_generate_prompts_total", "Prompts generated")
        self.out_tokens = m.counter("rayworks_generate_output_tokens_total", "Output tokens generated")
        self.in_tokens = m.counter("rayworks_generate_prompt_tokens_total", "Prompt tokens processed")
        self.chunks = m.counter("rayworks_generate_chunks_committed_total", "Output chunks committed")
        self.rate = m.gauge("rayworks_generate_prompts_per_s", "Prompts generated per second (this run)")
        self.tok_rate = m.gauge("rayworks_generate_output_tokens_per_s", "Output tokens per second (this run)")
        self.remaining = m.gauge("rayworks_generate_prompts_remaining", "Prompts still to generate in this run")
        self.remaining.set(total, tags=self.tags)

    def add(self, rows: list[dict]) -> None:
        n, toks = len(rows), sum(r["num_output_tokens"] for r in rows)
        self.done += n
        self.tokens += toks
        self.prompts.inc(n, tags=self.tags)
        self.out_tokens.inc(toks, tags=self.tags)
        self.in_tokens.inc(sum(r["num_prompt_tokens"] for r in rows), tags=self.tags)
        now = time.time()
        if now - self.t_last >= self.every_s or self.done == self.total:
            el = max(now - self.t0, 1e-9)
            self.rate.set(self.done / el, tags=self.tags)
            self.tok_rate.set(self.tokens / el, tags=self.tags)
            self.remaining.set(self.total - self.done, tags=self.tags)
            log(f"{self.done}/{self.total} prompts ({100 * self.done / max(self.total, 1):.0f}%), "
                f"{self.done / el:.1f} prompts/s, {self.tokens / el:.0f} output tok/s")
            self.t_last = now

    def committed(self) -> None:
        self.chunks.inc(1, tags=self.tags)


def errors_path(job: GenerateJob, out: str) -> str:
    return storage.join(out, f"errors.{'parquet' if job.output.format == 'parquet' else 'jsonl'}")


def write_errors(job: GenerateJob, out: str, p: Prompts) -> None:
    import pyarrow as pa

    from rayworks import metrics as m

    schema = pa.schema([("index", pa.int64()), ("id", pa.string()), ("error", pa.string()), ("reason", pa.string()),
                        ("prompt", pa.string())])
    chunks.write_table(errors_path(job, out), pa.Table.from_pylist(p.errors, schema=schema), job.output.format)
    c = m.counter("rayworks_generate_errors_total", "Input rows rejected into the errors file", ("error",))
    for code, n in error_counts(p).items():
        c.inc(n, tags=m.tags("generate", job.name, error=code))


def error_counts(p: Prompts) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for e in p.errors:
        counts[e["error"]] += 1
    return dict(sorted(counts.items()))


def generate(job: GenerateJob, out: str, pending: dict[int, list[dict]], run_id: str) -> dict:
    """Runs the pending chunks through the engines (engine.backend); commits each chunk when complete."""
    import pyarrow as pa
    import ray

    from rayworks.generate import engine

    # build_processor calls ray.init(runtime_env=<engine env>) itself; inside a Ray job that
    # env must merge with the job's own (same keys, e.g. HF_HUB_OFFLINE), which Ray refuses
    # unless told that the engine's values win.
    os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()  # job logs get our progress lines instead
    by_index = {r["index"]: r for rows in pending.values() for r in rows}
    need = {k: len(rows) for k, rows in pending.items()}
    cols = ["index", "prompt", "token_ids", "sampling", "budget"]
    # One block per chunk (in input order): a chunk's rows travel together, so chunks complete
    # one after another and are committed while later ones are still generating.
    tables = [pa.Table.from_pylist([{c: r[c] for c in cols} for r in pending[k]]) for k in sorted(pending)]
    seeded = any(json.loads(r["sampling"]).get("seed") is not None for r in by_index.values())
    src = ray.data.from_arrow(tables)
    ds = engine.generate_stage(job, src, seeded) if job.engine.backend == "llm" else engine.build(job, seeded)(src)
    progress = Progress(job, len(by_index))
    got: dict[int, list[dict]] = defaultdict(list)
    t_start = time.time()
    first_arrival = t_first = None
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pylist()
        t_first = t_first or time.time()
        arrivals = [r["arrival_ts"] for r in rows if r.get("arrival_ts")]
        if arrivals:
            first_arrival = min(arrivals + ([first_arrival] if first_arrival else []))
        for r in rows:
            src = by_index[r["index"]]
            r.update(id=src["id"], prompt=src["prompt"], run_id=run_id)
            k = chunks.chunk_of(r["index"], job)
            got[k].append(r)
            if len(got[k]) == need[k]:
                chunks.write_chunk(out, k, got.pop(k))
                progress.committed()
        progress.add(rows)
    t_end = time.time()
    if got:
        raise RuntimeError(f"the engines returned incomplete chunks {sorted(got)}; rerun to resume")
    # Engine start = from submitting the dataset to the first request the engine took (see
    # engine._postprocess); generation = from then to the last row back.
    ready = first_arrival if first_arrival and t_start <= first_arrival <= t_end else t_first
    return {"num_generated": progress.done, "num_output_tokens": progress.tokens,
            "wall_s": t_end - t_start, "engine_start_s": ready - t_start, "generation_s": t_end - ready,
            "prompts_per_s": progress.done / max(t_end - t_start, 1e-9),
            "output_tokens_per_s": progress.tokens / max(t_end - t_start, 1e-9),
            "output_tokens_per_s_after_engine_start": progress.tokens / max(t_end - ready, 1e-9)}


def write_manifest(job: GenerateJob, out: str, final_out: str, p: Prompts, output_path: str, summary: dict,
                   model_input: dict, tracking: dict | None = None) -> str:
    """Writes the manifest (last) into ``out``; paths in it name where the output ends up.

    ``model_input`` is the model's ``artifacts.input_ref``, hashed once per run (also the resume key);
    ``tracking`` the MLflow run's section (rayworks.tracking.jobrun.results).
    """
    cfg = job.model_dump(mode="json")
    rel = output_path[len(out.rstrip("/")) + 1:]
    manifest = artifacts.build(
        "generate", job.name, config_hash(cfg),
        [model_input] + [{"role": "prompts", "path": f, "sha256": s} for f, s in zip(p.files, p.sha256)],
        artifacts.describe_files(out), artifacts.versions("generate"),
        config=cfg, output=storage.join(final_out, rel),
        errors=storage.join(final_out, errors_path(job, out)[len(out.rstrip("/")) + 1:]),
        chunks=chunks.chunk_dir(final_out), summary=summary, tracking=tracking or {"enabled": False},
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )
    storage.write_json(storage.join(out, artifacts.MANIFEST), manifest)
    return storage.join(final_out, artifacts.MANIFEST)


def _target(job: GenerateJob, out: str) -> str:
    """Where this run writes: ``out``, or with output.overwrite over earlier results a fresh
    sibling build folder that replaces ``out`` only once the new results are complete."""
    # A build folder is never resumed (overwrite means start fresh): one left by an interrupted
    # overwrite goes either way.
    artifacts.discard_build(out)
    if not job.output.overwrite or not storage.list_files(out, recursive=True):
        return out
    build = artifacts.build_dir(out)
    artifacts.check_output_dir(build, None, "output.uri (its build folder)", kind="generate")
    log(f"output.overwrite: building the new results in {build}; {out} keeps the old ones until then")
    return build


def run(job: GenerateJob) -> dict:
    """Runs a generate job to completion (resuming an earlier run's chunks); returns the summary."""
    check_paths(job)
    out = job.artifact_uri()
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    log(f"run {run_id}: model {job.model}, input {job.input.path}")
    log(f"output: {out}")
    artifacts.check_output_dir(out, artifacts.storage_root(job), "output.uri", kind="generate")
    storage.cleanup_temporaries(out)
    tok = load_tokenizer(job.model)
    p = load_prompts(job, tok)
    final_out, out = out, _target(job, out)
    artifacts.mark(out, "generate")
    model_input = artifacts.input_ref("model", job.model)  # hashed once: resume key and manifest input
    chunks.check_plan(job, out, p.sha256, artifacts.ref_identity(model_input))
    # One MLflow run per attempt, as each attempt has its own run_id (stamped on the rows it generated).
    tracker = jobrun.start(job.cluster_spec(), job, "generate", final_out, {"rayworks.generate_run_id": run_id})
    try:
        summary, output_path, manifest = _run(job, out, final_out, p, model_input, run_id, tracker)
    except BaseException:
        jobrun.close(tracker, None, ok=False)
        raise
    jobrun.close(tracker, manifest)
    return summary


def run_metrics(summary: dict, num_completions: int) -> dict:
    """What generate logs to its MLflow run: prompts, completions, errors by type, tokens and throughput."""
    return {k: v for k, v in summary.items() if k != "run_id"} | {"num_completions": num_completions}


def _run(job: GenerateJob, out: str, final_out: str, p: Prompts, model_input: dict, run_id: str,
         tracker) -> tuple[dict, str, str]:
    """Generates what is pending, assembles the output and writes the manifest: (summary, output, manifest)."""
    write_errors(job, out, p)
    done = chunks.committed(out)
    pending: dict[int, list[dict]] = defaultdict(list)
    for r in p.good:
        k = chunks.chunk_of(r["index"], job)
        if k not in done:
            pending[k].append(r)
    n_pending = sum(len(v) for v in pending.values())
    log(f"{p.num_rows} rows: {len(p.good)} to generate, {len(p.errors)} bad (see {errors_path(job, out)}); "
        f"{len(p.good) - n_pending} already generated by an earlier run, {n_pending} now "
        f"in {len(pending)} chunks of <= {job.output.num_rows_per_chunk}")
    if os.environ.get("RAY_JOB_SUBMISSION_ID") or os.environ.get("RAY_ADDRESS"):
        log("Ray dashboard: Jobs and Ray Data pages of the cluster's dashboard")
    stats = generate(job, out, dict(pending), run_id) if pending else {"num_generated": 0, "num_output_tokens": 0}
    output_path, table = chunks.assemble(job, out, [r["index"] for r in p.good])
    summary = {"run_id": run_id, "num_rows": p.num_rows, "num_prompts": len(p.good), "num_errors": len(p.errors),
               "errors_by_type": error_counts(p),
               "num_resumed": len(p.good) - n_pending, **stats,
               "total_output_tokens": int(sum(table.column("num_output_tokens").to_pylist()))}
    storage.write_json(storage.join(out, "runs", f"{run_id}.json"), summary)
    tracking = jobrun.results(tracker, run_metrics(summary, table.num_rows))
    manifest = write_manifest(job, out, final_out, p, output_path, summary, model_input, tracking)
    if out != final_out:
        storage.publish_dir(out, final_out)
        output_path = storage.join(final_out, output_path[len(out.rstrip("/")) + 1:])
    log(f"done: {summary['num_prompts']} outputs in {output_path}, {summary['num_errors']} errors "
        f"{summary['errors_by_type'] or ''}, "
        f"{summary['num_generated']} generated by this run, {summary['num_resumed']} resumed")
    if stats.get("wall_s"):
        log(f"throughput: {stats['prompts_per_s']:.1f} prompts/s, {stats['output_tokens_per_s']:.0f} output tok/s "
            f"({stats['output_tokens_per_s_after_engine_start']:.0f} after engine start of "
            f"{stats['engine_start_s']:.0f} s)")
    log(f"manifest: {manifest}")
    print("RAYWORKS_GENERATE_SUMMARY " + json.dumps(summary), flush=True)
    return summary, output_path, manifest
