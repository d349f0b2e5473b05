"""vLLM engine settings: one model for every job that runs vLLM (serve and generate).

Fields are named as vLLM names its engine arguments (``gpu_memory_utilization``,
``max_model_len``, ...), so a reader can look each one up in vLLM's docs, and the same
YAML block means the same thing in a serve job and a generate job. The CPU KV cache has
no engine argument: vLLM's CPU backend reads the environment variable
``VLLM_CPU_KVCACHE_SPACE`` (whole GiB), which ``cpu_kvcache_space_gb`` sets.
Earlier rayworks spellings are refused with a message naming the new one.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from rayworks.config.base import StrictModel

# Old rayworks spelling -> the name it has now.
RENAMED = {
    "gpu_memory_fraction": "gpu_memory_utilization",
    "cpu_kv_cache_gb": "cpu_kvcache_space_gb",
    "kv_cache_space_gb": "cpu_kvcache_space_gb",
    "extra": "engine_kwargs",
}


def upgrade_renamed(data: dict[str, Any]) -> dict[str, Any]:
    """Engine settings with earlier rayworks names replaced by today's.

    Only for configs rayworks itself wrote (a serve manifest read back by ``rayworks serve
    update``): a deployment made before the rename must stay updatable. User YAML is refused.
    """
    return {RENAMED.get(k, k): v for k, v in data.items()}


class VLLMEngineSettings(StrictModel):
    """vLLM engine settings of one model (the same on every replica)."""

    max_model_len: int = Field(2048, ge=16, description="Context length in tokens (prompt + completion).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights/activations dtype: float32 on CPU, bfloat16 on GPU; auto takes the model's.")
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs (or CPU workers) each replica shards the model over.")
    gpu_memory_utilization: float = Field(
        0.9, gt=0, le=1, description="GPU only: share of each GPU's memory vLLM may use (weights + KV cache).")
    cpu_kvcache_space_gb: int = Field(
        1, ge=1, description="CPU only: whole GiB of RAM for the KV cache per replica; sets vLLM's "
                             "VLLM_CPU_KVCACHE_SPACE environment variable (vLLM reads an integer).")
    enforce_eager: bool | None = Field(
        None, description="Skip CUDA graphs / torch.compile: faster start, slower steps. Default: true on CPU "
                          "(compiling takes most of a CPU engine's start), false on GPU.")
    max_num_seqs: int | None = Field(
        None, ge=1, description="Most sequences the engine schedules at once per replica (vLLM's default if unset).")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Further vLLM engine arguments, passed through as given; they win over "
                                          "the fields above.")

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict):
            old = sorted(k for k in data if k in RENAMED)
            if old:
                raise ValueError("; ".join(f"'{k}' is now '{RENAMED[k]}' (vLLM's name): rename it" for k in old))
        return data

    def eager(self, on_cpu: bool) -> bool:
        """enforce_eager as set, else true on CPU and false on GPU."""
        return self.enforce_eager if self.enforce_eager is not None else on_cpu

    def vllm_kwargs(self, on_cpu: bool) -> dict[str, Any]:
        """vLLM engine arguments from these settings (engine_kwargs win)."""
        kw: dict[str, Any] = {"max_model_len": self.max_model_len, "dtype": self.dtype,
                              "tensor_parallel_size": self.tensor_parallel_size, "enforce_eager": self.eager(on_cpu)}
        if self.max_num_seqs:
            kw["max_num_seqs"] = self.max_num_seqs
        if not on_cpu:
            # On CPU this fraction would be the share of RAM for the KV cache; the env var sets that instead.
            kw["gpu_memory_utilization"] = self.gpu_memory_utilization
        kw.update(self.engine_kwargs)
        return kw

    def vllm_env(self, on_cpu: bool) -> dict[str, str]:
        """Environment variables vLLM reads for these settings (the CPU KV cache size)."""
        return {"VLLM_CPU_KVCACHE_SPACE": f"{self.cpu_kvcache_space_gb:d}"} if on_cpu else {}


# Every vLLM engine actor: no usage reporting, no Hub downloads (models are local folders or
# s3:// / gs:// copies), no tokenizer thread pools fighting the engine for the replica's CPUs.
ENGINE_ACTOR_ENV = {"VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "TOKENIZERS_PARALLELISM": "false"}


def cpu_engine_env(num_cpus: float) -> dict[str, str]:
    """Environment of a ``vllm.LLM`` that a Ray actor holds on CPU (embed, generate, the retriever).

    - ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the engine core runs in the actor's own process.
      By default vLLM spawns an engine-core process, which on CPU spawns a worker process:
      two more interpreters that each import torch and vLLM (an engine start of ~23 s against
      ~5 s in-process, tiny model, 2 cores) and a socket hop per engine step. The actor is
      already a process of its own, and a step on CPU leaves nothing to overlap.
    - ``VLLM_CPU_OMP_THREADS_BIND=nobind`` and one math thread per reserved CPU: Ray reserves
      the CPUs and the OS places the threads; vLLM's "auto" binding pins every engine of a node
      to the same cores and keeps one core for a scheduler process that no longer exists.

    Measured by tests/bench/bench_generate.py (README, performance).
    """
    return {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "OMP_NUM_THREADS": str(max(1, int(num_cpus)))}


def engine_actor_options(device: str, num_cpus_per_replica: float, accelerator_type: str | None,
                         env: dict[str, str]) -> dict[str, Any]:
    """Ray options of a Ray Data actor that holds one vLLM engine (embed and generate, backend llm):
    the replica's CPUs on CPU; one GPU (and one CPU for the actor) on GPU."""
    opts: dict[str, Any] = {"runtime_env": {"env_vars": env}}
    if device == "cpu":
        opts["num_cpus"] = num_cpus_per_replica
    else:
        opts.update(num_cpus=1, num_gpus=1)
        if accelerator_type:
            opts["accelerator_type"] = accelerator_type
    return opts
