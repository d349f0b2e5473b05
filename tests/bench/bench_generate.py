"""Benchmark: the rayworks generate job vs one plain `LLM(model).generate(prompts, params)`.

    python tests/bench/bench_generate.py                    # 1,024 prompts x 50 tokens, CPU
    python tests/bench/bench_generate.py --num-prompts 4096 # a longer generation phase
    python tests/bench/bench_generate.py --backend ray_data_llm
    python tests/bench/bench_generate.py --engine-env VLLM_CPU_OMP_THREADS_BIND=auto
    python tests/bench/bench_generate.py --baseline-env VLLM_ENABLE_V1_MULTIPROCESSING=0 --baseline-env OMP_NUM_THREADS=2

Same model (a tiny Llama built here, as the training job exports it), same prompts,
same SamplingParams(temperature=0.7, top_p=0.95, max_tokens=50). Each side runs
in its own process, one after the other, so they never share the CPUs. Printed:
output tokens/s of each, with and without the engine start, and their ratios
(targets: >= 0.95 after the engine start, >= 0.9 with it). The baseline's engine start
counts from before ``import vllm``; the rayworks side starts its own local Ray instance
(not counted), and its engine start is the time from submitting the dataset to the first
request the engine accepted (the actor's start and its vLLM import included).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from procs import env_pairs, install, run_owned

REPO = Path(__file__).resolve().parents[2]
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "VLLM_NO_USAGE_STATS": "1", "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
MAX_MODEL_LEN = 512


def prompts(n: int) -> list[str]:
    import pydoc_data.topics as t

    lines = [ln.strip() for ln in "\n".join(t.topics.values()).splitlines() if len(ln.strip()) > 30]
    return [lines[(i * 7919) % len(lines)][:160] for i in range(n)]


def baseline(model: str, prompts_path: str, max_tokens: int, seed: int | None) -> dict:
    """The seed's example: one LLM, one generate call. Its engine start counts from before
    ``import vllm``, as the job's counts its actor's start and import."""
    ps = [json.loads(x)["prompt"] for x in Path(prompts_path).read_text().splitlines()]
    t0 = time.time()
    from vllm import LLM, SamplingParams

    llm = LLM(model=model, dtype="float32", max_model_len=MAX_MODEL_LEN, enforce_eager=True)
    t1 = time.time()
    outs = llm.generate(ps, SamplingParams(temperature=0.7, top_p=0.95, max_tokens=max_tokens, seed=seed))
    t2 = time.time()
    toks = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"num_prompts": len(outs), "output_tokens": toks, "engine_start_s": t1 - t0, "generation_s": t2 - t1}


def rayworks(model: str, prompts_path: str, max_tokens: int, seed: int | None, out: str, replicas: int,
             batch_size: int, port_base: int, backend: str, engine_env: dict[str, str]) -> dict:
    """The generate job on a fresh local Ray instance."""
    import ray

    from rayworks.config.jobs import load_job_data
    from rayworks.generate.job import run

    # address="local": a fresh instance even where another Ray runs on this machine.
    ray.init(address="local", num_cpus=8, include_dashboard=False, _temp_dir=f"/tmp/rw{port_base}-bench",
             log_to_driver=False)
    job = load_job_data({
        "kind": "generate", "name": "bench", "model": model, "input": {"path": prompts_path},
        "runtime_env": {"env_vars": engine_env},
        "output": {"uri": out, "overwrite": True, "num_rows_per_chunk": 256},
        "sampling": {"temperature": 0.7, "top_p": 0.95, "max_tokens": max_tokens, "seed": seed},
        "engine": {"device": "cpu", "backend": backend, "num_replicas": replicas, "batch_size": batch_size,
                   "num_cpus_per_replica": 2, "max_model_len": MAX_MODEL_LEN, "dtype": "float32", "enforce_eager": True,
                   "cpu_kvcache_space_gb": 1},
    }, "bench", Path(out))
    s = run(job)
    ray.shutdown()
    return {"num_prompts": s["num_generated"], "output_tokens": s["num_output_tokens"],
            "engine_start_s": s["engine_start_s"], "generation_s": s["generation_s"], "wall_s": s["wall_s"]}


def _child(kind: str, kwargs: dict, env: dict[str, str] | None = None) -> dict:
    """Runs one side in a fresh process (vLLM spawns engine processes; each side gets a clean box)."""
    proc = run_owned([sys.executable, __file__, "--child", kind, json.dumps(kwargs)],
                     env={**os.environ, **ENV, **(env or {})}, cwd=REPO)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"{kind} failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-prompts", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=50)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--backend", choices=["llm", "ray_data_llm"], default="llm",
                    help="the generate job's engine.backend (llm: the default)")
    ap.add_argument("--engine-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment of the job's engines (its runtime_env), e.g. VLLM_CPU_OMP_THREADS_BIND=auto")
    ap.add_argument("--baseline-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment of the baseline's process, e.g. VLLM_ENABLE_V1_MULTIPROCESSING=0 "
                         "(the job's in-process engine core, by hand)")
    # No seed by default, as in the seed example: vllm-cpu 0.32 fails seeded requests whose
    # prefill is split across steps ("CPU Generator does not use offset"), which one big
    # LLM.generate call does. The generate job avoids that split when a seed is set.
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--port-base", type=int, default=int(os.environ.get("RAYWORKS_TEST_PORT_BASE", "27400")))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("child_kwargs", nargs="?", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    install()
    if a.child:
        for k, v in ENV.items():
            os.environ.setdefault(k, v)
        fn = baseline if a.child == "baseline" else rayworks
        res = fn(**json.loads(a.child_kwargs))
        print("BENCH_RESULT " + json.dumps(res), flush=True)
        return res

    sys.path.insert(0, str(REPO / "tests"))
    from tinymodel import make_tiny_model

    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    model = str(make_tiny_model(work / "model", hidden=128))  # vllm-cpu attention needs head_dim >= 32
    ppath = work / "prompts.jsonl"
    ppath.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts(a.num_prompts)))
    common = {"model": model, "prompts_path": str(ppath), "max_tokens": a.max_tokens, "seed": a.seed}
    base_env = env_pairs(ap, a.baseline_env)
    base = _child("baseline", common, base_env)
    rw = _child("rayworks", {**common, "out": str(work / "out"), "replicas": a.replicas, "batch_size": a.batch_size,
                             "port_base": a.port_base, "backend": a.backend,
                             "engine_env": dict(kv.split("=", 1) for kv in a.engine_env)})

    def tps(r, with_start):
        return r["output_tokens"] / (r["generation_s"] + (r["engine_start_s"] if with_start else 0))

    res = {"baseline": base, "rayworks": rw,
           "ratio_with_engine_start": tps(rw, True) / tps(base, True),
           "ratio_without_engine_start": tps(rw, False) / tps(base, False)}
    print(f"\nbench_generate: {a.num_prompts} prompts x <= {a.max_tokens} tokens, tiny Llama, vllm-cpu, "
          f"{a.replicas} engine replica(s), backend {a.backend}, batch_size {a.batch_size}"
          + (f"; baseline env {base_env}" if base_env else ""))
    print(f"{'':34}{'LLM.generate':>14}{'rayworks':>14}{'ratio':>8}")
    print(f"{'output tokens':34}{base['output_tokens']:>14}{rw['output_tokens']:>14}")
    print(f"{'engine start (s)':34}{base['engine_start_s']:>14.1f}{rw['engine_start_s']:>14.1f}")
    print(f"{'generation (s)':34}{base['generation_s']:>14.1f}{rw['generation_s']:>14.1f}")
    print(f"{'output tok/s incl. engine start':34}{tps(base, True):>14.0f}{tps(rw, True):>14.0f}"
          f"{res['ratio_with_engine_start']:>8.2f}")
    print(f"{'output tok/s after engine start':34}{tps(base, False):>14.0f}{tps(rw, False):>14.0f}"
          f"{res['ratio_without_engine_start']:>8.2f}")
    return res


if __name__ == "__main__":
    main()
