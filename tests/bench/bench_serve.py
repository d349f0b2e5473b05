"""Serving overhead: rayworks (Ray Serve LLM + gate) vs vLLM's own OpenAI server, side by side.

Same tiny exported model, same engine settings, same prompts, 16 concurrent streams of
64 tokens each (ignore_eos), 160 requests per run; prints output tokens/s and its ratio
to vLLM, p50/p90 TTFT under that load, and p50 TTFT of 30 requests sent one at a time
(the serving path's own latency, with no engine queue in it). Setups: vLLM's server;
rayworks on a default cluster spec (Serve's HA proxy, so one model streams directly from
vLLM's app behind the gate); rayworks with serve.ha_proxy: false (Ray Serve LLM's ingress,
the multi-model path). Each runs in its own process (Serve reads its env flags at
import). CPU-sized command (about 8-10 min on 2 cores):

    python tests/bench/bench_serve.py                       # all setups
    python tests/bench/bench_serve.py --setups vllm rayworks
    python tests/bench/bench_serve.py --setups vllm rayworks \
        --baseline-env VLLM_CPU_OMP_THREADS_BIND=nobind --baseline-env OMP_NUM_THREADS=2  # vLLM on both cores
    RAYWORKS_BENCH_MODEL=artifacts/train/tiny/export python tests/bench/bench_serve.py

Ports: RAYWORKS_TEST_PORT_BASE (default 27000) + 60..79.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procs import env_pairs, install, owned, run_owned

REPO = Path(__file__).resolve().parents[2]
BASE = int(os.environ.get("RAYWORKS_TEST_PORT_BASE", "27000")) + 60
ENGINE = {"max_model_len": 512, "dtype": "float32", "enforce_eager": True}
STREAMS, REQUESTS, MAX_TOKENS = 16, 160, 64
IDLE_PROBES = 30  # sequential requests after the load: TTFT with nothing queued
KEY = "bench-key"
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
       "RAY_USAGE_STATS_ENABLED": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}
# Per rayworks setup: the cluster spec's serve.ha_proxy. "rayworks" is the default cluster spec
# (HA proxy on, so a one-model job streams from vLLM's own app behind the gate); "rayworks-ingress"
# is a cluster with serve.ha_proxy: false, the path a multi-model job takes (Ray Serve LLM's ingress).
SETUPS = {"vllm": None, "rayworks": True, "rayworks-ingress": False}


def prompts() -> list[str]:
    import pydoc_data.topics as t

    text = " ".join(t.topics.values()).split()
    return [" ".join(text[i * 40:(i + 1) * 40]) for i in range(REQUESTS)]


async def load(url: str, key: str | None) -> dict:
    """16 concurrent streaming clients; output tok/s and TTFT percentiles."""
    import httpx

    todo = list(enumerate(prompts()))
    ttft, tokens = [], 0
    hdr = {"Authorization": f"Bearer {key}"} if key else {}

    async def worker(client):
        nonlocal tokens
        while todo:
            _, p = todo.pop()
            body = {"model": "tiny", "prompt": p, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True,
                    "ignore_eos": True, "stream_options": {"include_usage": True}}
            t0 = time.perf_counter()
            first = None
            async with client.stream("POST", f"{url}/v1/completions", json=body, headers=hdr) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    d = json.loads(line[6:])
                    if first is None and d.get("choices") and d["choices"][0].get("text"):
                        first = time.perf_counter() - t0
                    if d.get("usage"):
                        tokens += d["usage"]["completion_tokens"]
            ttft.append(first or 0.0)

    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*[worker(client) for _ in range(2)])  # warm-up: compile paths, caches
        todo[:] = list(enumerate(prompts()))
        ttft.clear()
        tokens = 0
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(STREAMS)])
        wall = time.perf_counter() - t0
        loaded = sorted(ttft)
        # Unloaded: one stream at a time, so TTFT is the path's own latency, not the engine's queue.
        todo[:] = list(enumerate(prompts()[:IDLE_PROBES]))
        ttft.clear()
        await worker(client)
    return {"tok_s": tokens / wall, "ttft_p50_ms": 1000 * statistics.median(loaded),
            "ttft_p90_ms": 1000 * loaded[int(0.9 * len(loaded))], "idle_ttft_p50_ms": 1000 * statistics.median(ttft),
            "tokens": tokens, "wall_s": wall}


def wait_http(url: str, timeout_s: float = 900, key: str | None = None,
              proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    import requests

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"server exited with rc {proc.returncode} before serving:\n{tail}")
        try:
            hdr = {"Authorization": f"Bearer {key}"} if key else {}
            if requests.get(f"{url}/v1/models", headers=hdr, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} not up after {timeout_s}s")


def run_vllm(model: str, extra_env: dict[str, str] | None = None) -> dict:
    port = BASE
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name",
           "tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(ENGINE["max_model_len"]),
           "--dtype", ENGINE["dtype"], "--enforce-eager", "--api-key", KEY]
    log_path = Path(tempfile.gettempdir()) / f"bench_serve_vllm_{port}.log"
    with open(log_path, "w") as log, owned(cmd, env={**os.environ, **ENV, **(extra_env or {})}, stdout=log,
                                           stderr=subprocess.STDOUT) as proc:
        wait_http(f"http://127.0.0.1:{port}", key=KEY, proc=proc, log=log_path)
        return asyncio.run(load(f"http://127.0.0.1:{port}", KEY))


def run_rayworks(model: str, ha_proxy: bool) -> dict:
    """One rayworks deployment (the job's own build_app) on a private Ray instance.

    The instance gets the node env a cluster spec with ``serve.ha_proxy`` = ``ha_proxy``
    gives every node, and the job decides direct streaming as it does on a cluster.
    """
    from rayworks.config.cluster import ServeHTTP
    from rayworks.config.serve import ServeJob

    port = BASE + 3
    flags = ServeHTTP(ha_proxy=ha_proxy, haproxy_stats_port=BASE + 5, haproxy_metrics_port=BASE + 6).node_env()
    job = ServeJob.model_validate({
        "kind": "serve", "name": "bench",
        "models": [{"id": "tiny", "source": model, "engine": {**ENGINE, "cpu_kvcache_space_gb": 1},  # = vLLM's 1 GiB
                    "replicas": {"max_ongoing_requests": 256}}],
        "auth": {"api_keys_env": "RW_BENCH_KEY"}})
    direct = job.direct_streaming(ha_proxy)
    if direct:
        flags["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"] = "1"  # before Ray Serve LLM is imported, as the job does
    print(f"rayworks: ha_proxy={ha_proxy} direct_streaming={direct}", flush=True)
    os.environ.update({**ENV, **flags, "RW_BENCH_KEY": KEY})
    import ray
    from ray import serve

    from rayworks.serve import render
    from rayworks.serve.app import build_app

    args = render.app_args(job, direct)
    env = {**ENV, **flags, "RW_BENCH_KEY": KEY}
    for cfg in args["llm_configs"]:
        cfg["runtime_env"]["env_vars"].update(env)
    ray.init(num_cpus=8, include_dashboard=False, _temp_dir=f"/tmp/rw{BASE}",
             runtime_env={"env_vars": env, "py_modules": [str(REPO / "platform" / "rayworks")]})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(args), name="bench", route_prefix="/")
        wait_http(f"http://127.0.0.1:{port}", key=KEY)
        return asyncio.run(load(f"http://127.0.0.1:{port}", KEY))
    finally:
        serve.shutdown()
        ray.shutdown()


def one(setup: str, model: str, baseline_env: dict[str, str]) -> None:
    """Child process: run one setup, print its JSON result on the last line."""
    res = run_vllm(model, baseline_env) if SETUPS[setup] is None else run_rayworks(model, SETUPS[setup])
    print("RESULT " + json.dumps(res), flush=True)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--model", default=os.environ.get("RAYWORKS_BENCH_MODEL"))
    ap.add_argument("--baseline-env", action="append", default=[], metavar="KEY=VALUE",
                    help="environment for vLLM's server only, e.g. VLLM_CPU_OMP_THREADS_BIND=nobind and "
                         "OMP_NUM_THREADS=2: on CPU vLLM's default binding keeps a core for a scheduler")
    a = ap.parse_args(argv)
    baseline_env = env_pairs(ap, a.baseline_env)
    install()
    if a.one:
        one(a.one, a.model, baseline_env)
        return {}
    model = a.model
    if not model:
        sys.path.insert(0, str(REPO / "tests"))
        from tinymodel import make_tiny_model

        model = str(make_tiny_model(Path(tempfile.mkdtemp(prefix="bench-serve-")) / "export", hidden=256))
    results = {}
    for s in a.setups:
        t0 = time.time()
        extra = [f"--baseline-env={kv}" for kv in a.baseline_env] if SETUPS[s] is None else []
        proc = run_owned([sys.executable, __file__, "--one", s, "--model", model, *extra], env={**os.environ, **ENV})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(f"{s}: failed (rc {proc.returncode})\n{proc.stderr[-2000:]}")
            continue
        results[s] = json.loads(line[-1][7:])
        print(f"{s}: done in {time.time() - t0:.0f}s", flush=True)
    base = results.get("vllm")
    print(f"\nserving overhead: {STREAMS} streams x {MAX_TOKENS} tokens, {REQUESTS} requests, model {model}"
          + (f"; vLLM's server with {' '.join(a.baseline_env)}" if a.baseline_env else ""))
    print("TTFT under load: p50/p90 over the 160 loaded requests; idle: p50 of "
          f"{IDLE_PROBES} one-at-a-time requests (the path's own latency); added = minus vLLM's")
    print(f"{'setup':18} {'out tok/s':>10} {'ratio':>6} {'p50 load ms':>12} {'added':>7} {'p90 load ms':>12} "
          f"{'p50 idle ms':>12} {'added':>7}")
    for s, r in results.items():
        ratio = f"{r['tok_s'] / base['tok_s']:.2f}" if base else "-"
        added = f"{r['ttft_p50_ms'] - base['ttft_p50_ms']:+.0f}" if base else "-"
        idle = f"{r['idle_ttft_p50_ms'] - base['idle_ttft_p50_ms']:+.0f}" if base else "-"
        print(f"{s:18} {r['tok_s']:10.0f} {ratio:>6} {r['ttft_p50_ms']:12.0f} {added:>7} {r['ttft_p90_ms']:12.0f} "
              f"{r['idle_ttft_p50_ms']:12.0f} {idle:>7}")
    return results


if __name__ == "__main__":
    main()
