"""The resumable output layout of a generate run.

``{out}/chunks/chunk-000042.parquet`` holds the generations of input rows
``42*C .. 43*C-1`` (C = output.num_rows_per_chunk, errors excluded), committed
atomically once every one of its rows is back from the engines; each row records the
run that generated it. A rerun lists the committed chunks and sends only the other
rows to the engines. ``plan.json`` pins what the chunks were generated from (the model
by content hash, not by path), so a rerun with a different model, input or sampling
cannot mix results silently.
"""

from __future__ import annotations

import io
import json

from rayworks import storage
from rayworks.config.base import config_hash
from rayworks.config.generate import GenerateJob
from rayworks.errors import ConfigError

OUTPUT_COLUMNS = ["index", "id", "prompt", "generated_text", "finish_reason", "num_prompt_tokens", "num_output_tokens"]
CHUNK_COLUMNS = OUTPUT_COLUMNS + ["run_id"]


def chunk_dir(out: str) -> str:
    return storage.join(out, "chunks")


def chunk_name(k: int) -> str:
    return f"chunk-{k:06d}.parquet"


def chunk_of(index: int, job: GenerateJob) -> int:
    return index // job.output.num_rows_per_chunk


def results_key(job: GenerateJob, input_sha256: list[str], model_sha256: str) -> dict:
    """What the generations depend on (engine replicas, batch sizes, names and paths do not).

    The model counts by content (its export manifest's sha256): the same path holding a
    retrained model is a different model, and a copied model is the same one.
    """
    return {"model_sha256": model_sha256, "input": job.input.model_dump(mode="json"), "input_sha256": input_sha256,
            "chat_template": job.chat_template, "system_prompt": job.system_prompt,
            "sampling": job.sampling.model_dump(mode="json"), "max_model_len": job.engine.max_model_len,
            "num_rows_per_chunk": job.output.num_rows_per_chunk}


def check_plan(job: GenerateJob, out: str, input_sha256: list[str], model_sha256: str) -> str:
    """Writes plan.json on a fresh run; on a rerun, refuses to resume a different plan."""
    key = results_key(job, input_sha256, model_sha256)
    h = config_hash(key)
    path = storage.join(out, "plan.json")
    if storage.exists(path):
        old = json.loads(storage.read_bytes(path))
        if old.get("hash") != h:
            old_key = old.get("key", {})
            changed = [k for k in sorted(key) if old_key.get(k) != key[k]]
            what = ", ".join(_describe_change(k, old_key.get(k), key[k], old.get("model_path"), job.model)
                             for k in changed)
            raise ConfigError(f"output.uri {out} holds results generated with a different {what}; rerun with the "
                              "same settings to resume, set output.overwrite: true to start fresh (the old "
                              "results stay until the new ones are complete), or use another name / output.uri")
        return h
    storage.write_json(path, {"hash": h, "key": key, "model_path": job.model})
    return h


def _describe_change(k: str, old, new, old_path: str | None, new_path: str) -> str:
    if k == "model_sha256":
        was = f"{old_path} " if old_path else ""
        return (f"model (earlier: {was}sha256 {str(old)[:12]}; now: {new_path} sha256 {str(new)[:12]})"
                if old else f"model (earlier results were keyed by model path, now {new_path} sha256 {new[:12]})")
    return k


def _chunk_files(out: str) -> list[str]:
    # Only committed names (list_files already hides storage.TMP_TAG temporaries a killed run left).
    return [f for f in storage.list_files(chunk_dir(out), ".parquet") if f.rsplit("/", 1)[1].startswith("chunk-")]


def committed(out: str) -> set[int]:
    """Chunk numbers already committed."""
    return {int(f.rsplit("/", 1)[1][len("chunk-"):-len(".parquet")]) for f in _chunk_files(out)}


def _parquet_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def write_chunk(out: str, k: int, rows: list[dict]) -> None:
    """Commits one chunk (rows in input order) atomically."""
    import pyarrow as pa

    rows = sorted(rows, key=lambda r: r["index"])
    table = pa.Table.from_pylist([{c: r[c] for c in CHUNK_COLUMNS} for r in rows], schema=chunk_schema())
    storage.write_bytes(storage.join(chunk_dir(out), chunk_name(k)), _parquet_bytes(table))


def chunk_schema():
    import pyarrow as pa

    return pa.schema([("index", pa.int64()), ("id", pa.string()), ("prompt", pa.string()),
                      ("generated_text", pa.string()), ("finish_reason", pa.string()),
                      ("num_prompt_tokens", pa.int64()), ("num_output_tokens", pa.int64()), ("run_id", pa.string())])


def read_chunks(out: str):
    """All committed rows as one Arrow table sorted by input index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for f in _chunk_files(out):
        with storage.open_input(f) as fh:
            tables.append(pq.read_table(fh))
    if not tables:
        return chunk_schema().empty_table()
    t = pa.concat_tables(tables)
    return t.sort_by("index")


def write_table(uri: str, table, fmt: str) -> None:
    """Writes a whole table as Parquet or JSON Lines, atomically."""
    if fmt == "parquet":
        storage.write_bytes(uri, _parquet_bytes(table))
        return
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in table.to_pylist())
    storage.write_bytes(uri, lines.encode())


def assemble(job: GenerateJob, out: str, good_indices: list[int]) -> tuple[str, object]:
    """The final output: every good prompt exactly once, in input order."""
    t = read_chunks(out)
    got = t.column("index").to_pylist()
    if got != sorted(good_indices) or len(set(got)) != len(got):
        missing = sorted(set(good_indices) - set(got))[:5]
        raise RuntimeError(f"committed chunks do not cover the prompts exactly once (missing e.g. {missing}, "
                           f"{len(got)} rows for {len(good_indices)} prompts); rerun to finish, or "
                           "output.overwrite: true to start over")
    path = storage.join(out, f"output.{'parquet' if job.output.format == 'parquet' else 'jsonl'}")
    write_table(path, t.select(OUTPUT_COLUMNS), job.output.format)
    return path, t
