"""The `train` job: a Llama causal LM trained with Ray Train + DeepSpeed on prep output.

Example (jobs/configs/train.yaml)::

    kind: train
    name: tiny
    model: {preset: tiny}
    data: {prep_uri: ../../artifacts/prep/python-docs}
    deepspeed:
      train_batch_size: 16
      train_micro_batch_size_per_gpu: 4
      zero_optimization: {stage: 2}
    scaling: {num_workers: 2}
    run: {num_steps: 50}

The ``deepspeed`` section is DeepSpeed's own JSON config, as users already write it.
Its keys that rayworks reads are typed (rayworks.config.deepspeed);
:func:`resolve_deepspeed` fills what DeepSpeed leaves to the caller
(``"auto"`` values, the missing one of the three batch numbers, precision and Adam
flavour for CPU or GPU workers); the preflight and every worker use the same result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from rayworks.config.base import StrictModel
from rayworks.config.deepspeed import DeepSpeedConfig, resolve_deepspeed
from rayworks.config.jobs import Bundle, JobBase
from rayworks.errors import ConfigError

if TYPE_CHECKING:
    from rayworks.config.cluster import ClusterSpec

__all__ = ["DataSpec", "ModelSpec", "RunSpec", "ScalingSpec", "TrainJob", "resolve_deepspeed"]


class ModelSpec(StrictModel):
    """Which Llama-architecture model to train."""

    preset: Literal["tiny", "125m", "1b", "7b"] | None = Field(
        "tiny", description="Named Llama shape: tiny (2 layers, runs on 2 CPU cores), 125m, 1b (Llama-3.2-1B "
                            "shape) or 7b (Llama-2-7B shape). Ignored when init_from is set.")
    init_from: str | None = Field(None, description="Hugging Face model directory (local path) to initialise from "
                                                    "instead of a random preset.")
    hidden_size: int | None = Field(None, ge=8, description="Override: hidden size.")
    num_layers: int | None = Field(None, ge=1, description="Override: number of decoder layers.")
    num_attention_heads: int | None = Field(None, ge=1, description="Override: attention heads.")
    num_key_value_heads: int | None = Field(None, ge=1, description="Override: key/value heads (GQA).")
    intermediate_size: int | None = Field(None, ge=8, description="Override: MLP hidden size.")
    max_position_embeddings: int | None = Field(None, ge=8, description="Override: longest sequence the model "
                                                                        "supports (default: max(preset, seq_len)).")
    rope_theta: float | None = Field(None, gt=0, description="Override: RoPE base.")
    vocab_size: int | None = Field(None, ge=8, description="Vocabulary size; default: the prep tokenizer's. A value "
                                                           "smaller than the tokenizer's is an error.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    attn_implementation: Literal["sdpa", "eager"] = Field("sdpa", description="Attention kernel (transformers).")
    seed: int = Field(0, description="Seed of the random initialisation (same on every worker).")

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if self.preset is None and self.init_from is None and self.hidden_size is None:
            raise ValueError("model: give a preset, init_from, or custom dimensions (hidden_size, num_layers, ...)")
        if self.hidden_size and self.num_attention_heads and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"model.hidden_size ({self.hidden_size}) must be divisible by "
                             f"model.num_attention_heads ({self.num_attention_heads})")
        if self.num_attention_heads and self.num_key_value_heads and \
                self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"model.num_attention_heads ({self.num_attention_heads}) must be divisible by "
                             f"model.num_key_value_heads ({self.num_key_value_heads})")
        return self

    def overrides(self) -> dict[str, Any]:
        """The custom dimensions that were set, in LlamaConfig's names."""
        names = {"hidden_size": "hidden_size", "num_layers": "num_hidden_layers",
                 "num_attention_heads": "num_attention_heads", "num_key_value_heads": "num_key_value_heads",
                 "intermediate_size": "intermediate_size", "max_position_embeddings": "max_position_embeddings",
                 "rope_theta": "rope_theta"}
        return {hf: getattr(self, ours) for ours, hf in names.items() if getattr(self, ours) is not None}


class DataSpec(StrictModel):
    """What to train on: the output of a prep job."""

    prep_uri: str = Field(..., description="Prep output directory (holds manifest.json): local path, s3:// or gs://.")
    train_split: str = Field("train", description="Split of the prep manifest to train on.")
    val_split: str | None = Field("val", description="Split for validation loss; null: no validation.")
    shuffle: bool = Field(True, description="Shuffle shard order and rows within shards, anew each epoch.")
    seed: int = Field(0, description="Seed of the data order (the order is a pure function of seed, epoch and step).")
    num_val_sequences: int | None = Field(256, ge=1, description="Validation sequences per evaluation (the first "
                                                                 "ones of the split); null: the whole split.")


class ScalingSpec(StrictModel):
    """How many workers, on what."""

    num_workers: int = Field(2, ge=1, description="Training workers (one process each; one GPU each with use_gpu).")
    use_gpu: bool = Field(False, description="GPU workers (nccl, bf16, fused Adam) or CPU workers (gloo, fp32, "
                                             "torch Adam).")
    num_cpus_per_worker: float = Field(1.0, gt=0, description="CPUs each worker reserves.")
    num_gpus_per_worker: float = Field(1.0, gt=0, description="GPUs each worker reserves (use_gpu only).")
    accelerator_type: str | None = Field(None, description="Required GPU type, e.g. H100 or A100 (use_gpu only).")
    resources_per_worker: dict[str, float] = Field(default_factory=dict,
                                                   description="Extra custom Ray resources each worker reserves.")
    num_cpus_data: float = Field(1.0, ge=0, description="CPUs kept for Ray Data's reading tasks.")
    peak_flops_per_device: float | None = Field(None, gt=0, description="Peak bf16 FLOP/s of one device for MFU; "
                                                                        "default: looked up from the GPU's name.")

    @model_validator(mode="after")
    def _check(self) -> "ScalingSpec":
        if self.accelerator_type and not self.use_gpu:
            raise ValueError(f"scaling.accelerator_type={self.accelerator_type!r} needs scaling.use_gpu: true")
        return self


class RunSpec(StrictModel):
    """How long, how often, and where."""

    num_steps: int | None = Field(None, ge=1, description="Optimizer steps to train (give this or num_epochs).")
    num_epochs: float | None = Field(None, gt=0, description="Passes over the train split (converted to steps).")
    log_every_steps: int = Field(10, ge=1, description="Report loss, lr, grad norm, tokens/s and MFU every N steps.")
    eval_every_steps: int = Field(50, ge=1, description="Validation loss every N steps (and at step 0 and the end).")
    checkpoint_every_steps: int = Field(100, ge=1, description="Save and report a checkpoint every N steps (and at "
                                                               "the end).")
    num_checkpoints_to_keep: int = Field(2, ge=1, description="Checkpoints kept in storage (the newest ones).")
    output_uri: str | None = Field(None, description="Output directory; default {storage}/train/{name}.")
    max_failures: int = Field(1, ge=-1, description="Worker-group restarts from the latest checkpoint before the "
                                                    "run fails (-1: unlimited).")
    export: bool = Field(True, description="Export the final checkpoint to a Hugging Face directory.")
    export_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Weights dtype of the export; auto: bfloat16 if trained in bf16, else float32.")
    resume: Literal["auto", "never"] = Field(
        "auto", description="auto: continue from this run's latest checkpoint if it is the same work (same model, "
                            "deepspeed, data order, workers and prep data; steps, logging and export may change), "
                            "and refuse otherwise; never: start at step 0, moving earlier checkpoints aside to "
                            "{output}/superseded/<UTC time>/ (nothing is deleted).")

    @model_validator(mode="after")
    def _check(self) -> "RunSpec":
        if (self.num_steps is None) == (self.num_epochs is None):
            raise ValueError("run: give exactly one of num_steps or num_epochs")
        return self


def default_deepspeed() -> DeepSpeedConfig:
    return DeepSpeedConfig.model_validate({
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.0}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": "auto",
                                                     "warmup_num_steps": 10}},
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 2},
        "bf16": {"enabled": "auto"},
    })


class TrainJob(JobBase):
    """Train a Llama causal LM on prep output with Ray Train's TorchTrainer and DeepSpeed ZeRO."""

    kind: Literal["train"] = Field(..., description="Always 'train'.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Model shape or initial weights.")
    data: DataSpec = Field(..., description="Prep output to train on.")
    deepspeed: DeepSpeedConfig = Field(default_factory=default_deepspeed,
                                       description="DeepSpeed config in DeepSpeed's own JSON format (batch sizes, "
                                                   "optimizer, scheduler, bf16/fp16, zero_optimization, ...); "
                                                   "the keys rayworks reads are typed, the rest passes through.")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Workers and their resources.")
    run: RunSpec = Field(..., description="Steps, logging, evaluation, checkpoints, output.")
    tracking: bool = Field(True, description="Log this run to MLflow (the cluster spec's `tracking`): params, "
                                             "metrics from rank 0, the manifest, the export as a model version. "
                                             "false/off: no MLflow run.")

    path_fields: ClassVar[tuple[str, ...]] = ("data.prep_uri", "model.init_from", "run.output_uri")

    @model_validator(mode="after")
    def _check_ds(self) -> "TrainJob":
        # Batch arithmetic and precision need nothing but the config: fail at load time.
        resolve_deepspeed(self.deepspeed, self.scaling.num_workers, self.scaling.use_gpu, self.run.num_steps or 1)
        return self

    def resource_request(self) -> list[Bundle]:
        s = self.scaling
        bundles = [Bundle(num_cpus=s.num_cpus_per_worker, num_gpus=s.num_gpus_per_worker if s.use_gpu else 0,
                          accelerator_type=s.accelerator_type, count=s.num_workers, what="train worker")]
        if s.num_cpus_data > 0:
            bundles.append(Bundle(num_cpus=s.num_cpus_data, what="train data loading (Ray Data)"))
        return bundles

    def preflight(self, spec: "ClusterSpec") -> None:
        # The prep output it reads is checked by rayworks.train.preflight (KINDS["train"]).
        self.check_custom_resources(spec)

    def check_custom_resources(self, spec: "ClusterSpec") -> None:
        """Custom per-worker resources must exist on some node type of the spec."""
        for name, amount in self.scaling.resources_per_worker.items():
            if not any(node.resources.get(name, 0) >= amount for _, node, n in spec.node_types() if n > 0):
                raise ConfigError(f"scaling.resources_per_worker.{name}={amount:g}: no node type in spec "
                                  f"{spec.name!r} offers that much {name!r}; add it to a node's `resources` "
                                  "or remove it")

    def explicit_output(self) -> str | None:
        return self.run.output_uri

    def resolved_deepspeed(self, num_steps: int) -> dict[str, Any]:
        return resolve_deepspeed(self.deepspeed, self.scaling.num_workers, self.scaling.use_gpu, num_steps)
