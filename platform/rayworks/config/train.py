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
:func:`resolve_deepspeed` checks it and fills what DeepSpeed leaves to the caller
(``"auto"`` values, the missing one of the three batch numbers, precision and Adam
flavour for CPU or GPU workers); the preflight and every worker use the same result.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from rayworks.config.base import StrictModel
from rayworks.config.jobs import Bundle, JobBase
from rayworks.errors import ConfigError

if TYPE_CHECKING:
    from rayworks.config.cluster import ClusterSpec

PRESETS = ("tiny", "125m", "1b", "7b")
OPTIMIZERS = {"adam", "adamw"}
SCHEDULERS = {"WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest"}


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

    @model_validator(mode="after")
    def _check(self) -> "RunSpec":
        if (self.num_steps is None) == (self.num_epochs is None):
            raise ValueError("run: give exactly one of num_steps or num_epochs")
        return self


def default_deepspeed() -> dict[str, Any]:
    return {
        "train_micro_batch_size_per_gpu": 4,
        "gradient_accumulation_steps": 1,
        "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.0}},
        "scheduler": {"type": "WarmupLR", "params": {"warmup_min_lr": 0, "warmup_max_lr": "auto",
                                                     "warmup_num_steps": 10}},
        "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 2},
        "bf16": {"enabled": "auto"},
    }


class TrainJob(JobBase):
    """Train a Llama causal LM on prep output with Ray Train's TorchTrainer and DeepSpeed ZeRO."""

    kind: Literal["train"] = Field(..., description="Always 'train'.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="Model shape or initial weights.")
    data: DataSpec = Field(..., description="Prep output to train on.")
    deepspeed: dict[str, Any] = Field(default_factory=default_deepspeed,
                                      description="DeepSpeed config in DeepSpeed's own JSON format (batch sizes, "
                                                  "optimizer, scheduler, bf16/fp16, zero_optimization, ...).")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="Workers and their resources.")
    run: RunSpec = Field(..., description="Steps, logging, evaluation, checkpoints, output.")

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
        self.check_custom_resources(spec)
        self.check_inputs()

    def check_custom_resources(self, spec: "ClusterSpec") -> None:
        """Custom per-worker resources must exist on some node type of the spec."""
        for name, amount in self.scaling.resources_per_worker.items():
            if not any(node.resources.get(name, 0) >= amount for _, node, n in spec.node_types() if n > 0):
                raise ConfigError(f"scaling.resources_per_worker.{name}={amount:g}: no node type in spec "
                                  f"{spec.name!r} offers that much {name!r}; add it to a node's `resources` "
                                  "or remove it")

    def check_inputs(self) -> None:
        """Reads the prep manifest: vocabulary, splits and sequence length must fit the model."""
        from rayworks.train.inputs import check_job_inputs

        check_job_inputs(self)

    def output_uri(self, spec: "ClusterSpec | None" = None) -> str:
        """Where this run writes: run.output_uri or {storage}/train/{name}."""
        if self.run.output_uri:
            return self.run.output_uri.rstrip("/")
        spec = spec or self.cluster_spec()
        return f"{spec.storage.uri.rstrip('/')}/train/{self.name}"

    def resolved_deepspeed(self, num_steps: int) -> dict[str, Any]:
        return resolve_deepspeed(self.deepspeed, self.scaling.num_workers, self.scaling.use_gpu, num_steps)


def _num(v) -> int | None:
    return None if v is None or v == "auto" else v


def resolve_deepspeed(ds: dict[str, Any], num_workers: int, use_gpu: bool, num_steps: int) -> dict[str, Any]:
    """Checks a DeepSpeed config and fills what depends on the workers.

    Args:
        ds: DeepSpeed's JSON config as the user wrote it.
        num_workers: training workers (DeepSpeed's data-parallel world size).
        use_gpu: GPU workers (bf16, fused Adam) or CPU workers (fp32, torch Adam).
        num_steps: total optimizer steps (fills "auto" total_num_steps of decaying schedules).

    Returns:
        A new dict ready for ``deepspeed.initialize(config=...)``.

    Raises:
        ConfigError: naming the key and the numbers that disagree.
    """
    ds = copy.deepcopy(ds)
    t, m, a = (_num(ds.get(k)) for k in ("train_batch_size", "train_micro_batch_size_per_gpu",
                                          "gradient_accumulation_steps"))
    for key, v in (("train_batch_size", t), ("train_micro_batch_size_per_gpu", m), ("gradient_accumulation_steps", a)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"deepspeed.{key}: must be a positive integer or \"auto\" (got {v!r})")
    w = num_workers
    if t is not None and m is not None and a is not None:
        if t != m * a * w:
            raise ConfigError(
                f"deepspeed.train_batch_size ({t}) must equal train_micro_batch_size_per_gpu ({m}) x "
                f"gradient_accumulation_steps ({a}) x scaling.num_workers ({w}) = {m * a * w}; "
                f"fix one of the four")
    elif t is not None and m is not None:
        if t % (m * w):
            raise ConfigError(f"deepspeed.train_batch_size ({t}) is not a multiple of train_micro_batch_size_per_gpu "
                              f"({m}) x scaling.num_workers ({w}) = {m * w}; no whole gradient_accumulation_steps fits")
        a = t // (m * w)
    elif t is not None and a is not None:
        if t % (a * w):
            raise ConfigError(f"deepspeed.train_batch_size ({t}) is not a multiple of gradient_accumulation_steps "
                              f"({a}) x scaling.num_workers ({w}) = {a * w}; no whole micro batch fits")
        m = t // (a * w)
    elif m is not None:
        a = a or 1
        t = m * a * w
    elif t is not None:
        if t % w:
            raise ConfigError(f"deepspeed.train_batch_size ({t}) is not a multiple of scaling.num_workers ({w})")
        a, m = 1, t // w
    else:
        raise ConfigError("deepspeed: give train_batch_size or train_micro_batch_size_per_gpu")
    ds.update(train_batch_size=t, train_micro_batch_size_per_gpu=m, gradient_accumulation_steps=a)

    for key in ("bf16", "fp16"):
        sec = ds.get(key)
        if sec is None:
            continue
        if not isinstance(sec, dict):
            raise ConfigError(f"deepspeed.{key}: expected a mapping like {{enabled: auto}} (got {sec!r})")
        if sec.get("enabled") == "auto":
            sec["enabled"] = use_gpu and key == "bf16"
        if sec.get("enabled") and not use_gpu:
            raise ConfigError(f"deepspeed.{key}.enabled: true on CPU workers; the CPU path trains in fp32. "
                              f"Set deepspeed.{key}.enabled: auto (bf16 on GPU, fp32 on CPU) or false")
    if (ds.get("bf16") or {}).get("enabled") and (ds.get("fp16") or {}).get("enabled"):
        raise ConfigError("deepspeed: bf16 and fp16 are both enabled; enable one")

    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {"lr": 1e-3}})
    if str(opt.get("type", "")).lower() not in OPTIMIZERS:
        raise ConfigError(f"deepspeed.optimizer.type: {opt.get('type')!r} is not supported; use Adam or AdamW")
    params = opt.setdefault("params", {})
    if not isinstance(params.get("lr", 1e-3), (int, float)):
        raise ConfigError(f"deepspeed.optimizer.params.lr: expected a number (got {params.get('lr')!r})")
    if params.get("torch_adam", "auto") == "auto":
        # DeepSpeed's fused Adam is a CUDA kernel; CPU workers use torch's Adam (STACK.md pitfall 4).
        params["torch_adam"] = not use_gpu
    if not use_gpu and params["torch_adam"] is False:
        raise ConfigError("deepspeed.optimizer.params.torch_adam: false needs GPU workers (fused Adam); "
                          "use auto or true on CPU")

    sched = ds.get("scheduler")
    if sched is not None:
        if sched.get("type") not in SCHEDULERS:
            raise ConfigError(f"deepspeed.scheduler.type: {sched.get('type')!r} is not a DeepSpeed scheduler; "
                              f"use one of {sorted(SCHEDULERS)}")
        sp = sched.setdefault("params", {})
        for k, v in list(sp.items()):
            if v == "auto":
                if k == "total_num_steps":
                    sp[k] = num_steps
                elif k in ("warmup_max_lr", "cos_max_lr"):
                    sp[k] = params.get("lr", 1e-3)
                else:
                    raise ConfigError(f"deepspeed.scheduler.params.{k}: \"auto\" is only understood for "
                                      "total_num_steps and warmup_max_lr; give a number")
        if sched["type"] in ("WarmupDecayLR", "WarmupCosineLR") and "total_num_steps" not in sp:
            sp["total_num_steps"] = num_steps

    zero = ds.setdefault("zero_optimization", {"stage": 0})
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"deepspeed.zero_optimization.stage: {stage!r}; use 0, 1, 2 or 3")
    for key, min_stage in (("offload_optimizer", 1), ("offload_param", 3)):
        off = zero.get(key)
        if not off or off.get("device", "none") == "none":
            continue
        if off.get("device") not in ("cpu", "nvme"):
            raise ConfigError(f"deepspeed.zero_optimization.{key}.device: {off.get('device')!r}; use cpu, nvme or none")
        if stage < min_stage:
            raise ConfigError(f"deepspeed.zero_optimization.{key} needs stage >= {min_stage} (stage is {stage})")
        if not use_gpu:
            raise ConfigError(f"deepspeed.zero_optimization.{key}: CPU workers already keep this state in memory; "
                              "remove the offload or use GPU workers")
    # DeepSpeed prints its own progress every steps_per_print; rayworks reports on its own schedule.
    ds.setdefault("steps_per_print", 10**9)
    ds.setdefault("wall_clock_breakdown", False)
    return ds
