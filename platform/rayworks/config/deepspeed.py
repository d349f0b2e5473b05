"""The ``deepspeed`` section of a train job: DeepSpeed's own JSON config, typed where rayworks reads it.

Users write DeepSpeed's config as DeepSpeed documents it. The keys rayworks reads or
fills (batch sizes, optimizer type and learning rate, scheduler, precision, ZeRO stage
and offload, gradient clipping) are modelled strictly, so a wrongly typed value fails at
load time with its field path (``deepspeed.optimizer.params.lr: Input should be a valid
number (got '1e-3')``) instead of as a traceback inside a worker. Every other key passes
through verbatim (``extra="allow"``): DeepSpeed has hundreds and checks them itself.

:func:`resolve_deepspeed` then fills what depends on the workers (the missing one of the
three batch numbers, ``"auto"`` precision and Adam flavour for CPU or GPU workers,
``"auto"`` scheduler values); the preflight and every worker use the same result.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, PlainValidator, ValidationError, WithJsonSchema,
                      model_serializer, model_validator)

from rayworks.errors import ConfigError

SCHEDULERS = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest")
AUTO_SCHEDULER_KEYS = ("total_num_steps", "warmup_max_lr", "cos_max_lr")


def _pos_int_or_auto(v: Any) -> int | str:
    if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
        return v
    raise ValueError(f"must be a positive integer or \"auto\" (got {v!r})")


def _bool_or_auto(v: Any) -> bool | str:
    if isinstance(v, bool) or v == "auto":
        return v
    raise ValueError(f"must be true, false or \"auto\" (got {v!r})")


def _zero_stage(v: Any) -> int:
    # A plain Literal[0, 1, 2, 3] would accept true (== 1) and 2.0.
    if isinstance(v, int) and not isinstance(v, bool) and v in (0, 1, 2, 3):
        return v
    raise ValueError(f"use 0, 1, 2 or 3 (got {v!r})")


PosIntOrAuto = Annotated[Any, PlainValidator(_pos_int_or_auto),
                         WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]})]
BoolOrAuto = Annotated[Any, PlainValidator(_bool_or_auto),
                       WithJsonSchema({"anyOf": [{"type": "boolean"}, {"const": "auto"}]})]
ZeroStage = Annotated[Any, PlainValidator(_zero_stage), WithJsonSchema({"enum": [0, 1, 2, 3]})]


class Passthrough(BaseModel):
    """A DeepSpeed section: typed keys are strict, other keys pass through as written."""

    model_config = ConfigDict(extra="allow", strict=True, protected_namespaces=())

    @model_serializer(mode="wrap")
    def _as_written(self, handler):
        # Dump only what the user wrote (plus filled values), never our defaults: the dict goes to
        # DeepSpeed, whose own defaults must apply to keys nobody set.
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


class Precision(Passthrough):
    """``bf16`` or ``fp16``."""

    enabled: BoolOrAuto = Field("auto", description="true, false, or auto (bf16 on GPU workers, fp32 on CPU).")


class OptimizerParams(Passthrough):
    """``optimizer.params`` (betas, eps, weight_decay, ... pass through)."""

    lr: float = Field(1e-3, gt=0, description="Learning rate (the peak, when a warmup scheduler runs).")
    torch_adam: BoolOrAuto = Field("auto", description="torch's Adam (true) or DeepSpeed's fused CUDA Adam "
                                                       "(false); auto: fused on GPU workers, torch on CPU.")


class Optimizer(Passthrough):
    """``optimizer``: rayworks supports DeepSpeed's Adam and AdamW."""

    type: str = Field(..., description="Adam or AdamW (any case).")
    params: OptimizerParams = Field(default_factory=OptimizerParams, description="Optimizer parameters.")

    @model_validator(mode="after")
    def _check(self) -> "Optimizer":
        if self.type.lower() not in ("adam", "adamw"):
            raise ValueError(f"type {self.type!r} is not supported; use Adam or AdamW")
        return self


class Scheduler(Passthrough):
    """``scheduler``: one of DeepSpeed's learning-rate schedules."""

    type: Literal["WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest"] = Field(
        ..., description="DeepSpeed scheduler name.")
    params: dict[str, Any] = Field(default_factory=dict, description="Scheduler parameters; \"auto\" is filled for "
                                                                     + ", ".join(AUTO_SCHEDULER_KEYS) + ".")

    @model_validator(mode="after")
    def _check(self) -> "Scheduler":
        for k, v in self.params.items():
            if v == "auto" and k not in AUTO_SCHEDULER_KEYS:
                raise ValueError(f"params.{k}: \"auto\" is only understood for {', '.join(AUTO_SCHEDULER_KEYS)}; "
                                 "give a number")
        return self


class Offload(Passthrough):
    """``zero_optimization.offload_optimizer`` / ``offload_param``."""

    device: Literal["cpu", "nvme", "none"] = Field("none", description="Where the state lives: cpu, nvme or none.")


class ZeroOptimization(Passthrough):
    """``zero_optimization`` (bucket sizes, overlap_comm, ... pass through)."""

    stage: ZeroStage = Field(0, description="ZeRO stage: 0 (plain data parallel), 1 (optimizer state sharded), "
                                            "2 (+ gradients), 3 (+ parameters).")
    offload_optimizer: Offload | None = Field(None, description="Optimizer state offload (stage >= 1, GPU).")
    offload_param: Offload | None = Field(None, description="Parameter offload (stage 3, GPU).")

    @model_validator(mode="after")
    def _check(self) -> "ZeroOptimization":
        for key, min_stage in (("offload_optimizer", 1), ("offload_param", 3)):
            off = getattr(self, key)
            if off is not None and off.device != "none" and self.stage < min_stage:
                raise ValueError(f"{key} needs stage >= {min_stage} (stage is {self.stage})")
        return self


class DeepSpeedConfig(Passthrough):
    """DeepSpeed's JSON config. Typed keys are checked; the rest goes to DeepSpeed as written."""

    train_batch_size: PosIntOrAuto | None = Field(
        None, description="Sequences per optimizer step over all workers (= micro batch x grad accumulation x "
                          "workers); auto or absent: derived.")
    train_micro_batch_size_per_gpu: PosIntOrAuto | None = Field(
        None, description="Sequences per forward/backward on one worker; auto or absent: derived.")
    gradient_accumulation_steps: PosIntOrAuto | None = Field(
        None, description="Micro batches per optimizer step; auto or absent: derived (1 if underdetermined).")
    gradient_clipping: float | None = Field(None, ge=0, description="Clip the global gradient norm to this.")
    optimizer: Optimizer | None = Field(None, description="Optimizer; absent: AdamW, lr 1e-3.")
    scheduler: Scheduler | None = Field(None, description="Learning-rate schedule; absent: constant lr.")
    zero_optimization: ZeroOptimization | None = Field(None, description="ZeRO stage and its settings.")
    bf16: Precision | None = Field(None, description="bfloat16 training (GPU workers).")
    fp16: Precision | None = Field(None, description="float16 training with loss scaling (GPU workers).")
    steps_per_print: int | None = Field(None, ge=1, description="DeepSpeed's own progress print; rayworks "
                                                                "sets it very high and reports itself.")

    @model_validator(mode="after")
    def _check(self) -> "DeepSpeedConfig":
        if _given(self.train_batch_size) is None and _given(self.train_micro_batch_size_per_gpu) is None:
            raise ValueError("give train_batch_size or train_micro_batch_size_per_gpu")
        if self.bf16 and self.fp16 and self.bf16.enabled is True and self.fp16.enabled is True:
            raise ValueError("bf16 and fp16 are both enabled; enable one")
        return self


def _given(v: Any) -> int | None:
    return None if v is None or v == "auto" else v


def parse_deepspeed(ds: "DeepSpeedConfig | dict[str, Any]") -> DeepSpeedConfig:
    """A DeepSpeedConfig from a model or a plain dict; ConfigError names each bad field's path."""
    if isinstance(ds, DeepSpeedConfig):
        return ds
    try:
        return DeepSpeedConfig.model_validate(ds)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            path = ".".join(["deepspeed", *(str(p) for p in err["loc"])])
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) or err["type"] == "missing" else f" (got {got!r})"
            parts.append(f"{path}: {err['msg'].removeprefix('Value error, ')}{shown}")
        raise ConfigError("; ".join(parts)) from None


def _batch_sizes(t: int | None, m: int | None, a: int | None, w: int) -> tuple[int, int, int]:
    """(train_batch_size, micro batch, grad accumulation) from those given, for w workers."""
    if t is not None and m is not None and a is not None:
        if t != m * a * w:
            raise ConfigError(
                f"deepspeed.train_batch_size ({t}) must equal train_micro_batch_size_per_gpu ({m}) x "
                f"gradient_accumulation_steps ({a}) x scaling.num_workers ({w}) = {m * a * w}; fix one of the four")
        return t, m, a
    if t is not None and m is not None:
        if t % (m * w):
            raise ConfigError(f"deepspeed.train_batch_size ({t}) is not a multiple of train_micro_batch_size_per_gpu "
                              f"({m}) x scaling.num_workers ({w}) = {m * w}; no whole gradient_accumulation_steps fits")
        return t, m, t // (m * w)
    if t is not None and a is not None:
        if t % (a * w):
            raise ConfigError(f"deepspeed.train_batch_size ({t}) is not a multiple of gradient_accumulation_steps "
                              f"({a}) x scaling.num_workers ({w}) = {a * w}; no whole micro batch fits")
        return t, t // (a * w), a
    if m is not None:
        a = a or 1
        return m * a * w, m, a
    if t % w:  # the model guarantees t or m
        raise ConfigError(f"deepspeed.train_batch_size ({t}) is not a multiple of scaling.num_workers ({w})")
    return t, t // w, 1


def resolve_deepspeed(ds: "DeepSpeedConfig | dict[str, Any]", num_workers: int, use_gpu: bool,
                      num_steps: int) -> dict[str, Any]:
    """Fills what depends on the workers; returns a new dict for ``deepspeed.initialize(config=...)``.

    Args:
        ds: the ``deepspeed`` section (model, or DeepSpeed's JSON as a dict).
        num_workers: training workers (DeepSpeed's data-parallel world size).
        use_gpu: GPU workers (bf16, fused Adam) or CPU workers (fp32, torch Adam).
        num_steps: total optimizer steps (fills "auto" total_num_steps of decaying schedules).

    Raises:
        ConfigError: naming the key and the numbers that disagree.
    """
    cfg = parse_deepspeed(ds)
    out = cfg.model_dump(mode="json")
    t, m, a = _batch_sizes(_given(cfg.train_batch_size), _given(cfg.train_micro_batch_size_per_gpu),
                           _given(cfg.gradient_accumulation_steps), num_workers)
    out.update(train_batch_size=t, train_micro_batch_size_per_gpu=m, gradient_accumulation_steps=a)

    for key in ("bf16", "fp16"):
        sec = out.get(key)
        if sec is None:
            continue
        if sec.get("enabled") == "auto":
            sec["enabled"] = use_gpu and key == "bf16"
        if sec.get("enabled") and not use_gpu:
            raise ConfigError(f"deepspeed.{key}.enabled: true on CPU workers; the CPU path trains in fp32. "
                              f"Set deepspeed.{key}.enabled: auto (bf16 on GPU, fp32 on CPU) or false")

    opt = out.setdefault("optimizer", {"type": "AdamW"})
    params = opt.setdefault("params", {})
    lr = params.setdefault("lr", OptimizerParams().lr)
    if params.get("torch_adam", "auto") == "auto":
        # DeepSpeed's fused Adam is a CUDA kernel; CPU workers use torch's Adam (STACK.md pitfall 4).
        params["torch_adam"] = not use_gpu
    if not use_gpu and params["torch_adam"] is False:
        raise ConfigError("deepspeed.optimizer.params.torch_adam: false needs GPU workers (fused Adam); "
                          "use auto or true on CPU")

    sched = out.get("scheduler")
    if sched is not None:
        sp = sched.setdefault("params", {})
        for k, v in sp.items():
            if v == "auto":
                sp[k] = num_steps if k == "total_num_steps" else lr
        if sched["type"] in ("WarmupDecayLR", "WarmupCosineLR"):
            sp.setdefault("total_num_steps", num_steps)

    zero = out.setdefault("zero_optimization", {"stage": 0})
    zero.setdefault("stage", 0)
    if not use_gpu and zero["stage"] in (1, 2):
        # gloo has no reduce-scatter: with DeepSpeed's default (reduce_scatter: true) each rank's
        # gradient partition gets a reduce op of its own. One all-reduce, after which each rank
        # keeps its partition, is the same sum (same losses) and was not slower on CPU workers
        # (bench_train.py, ZeRO-2, default shape, two pairs of runs: median 0.84 -> 0.92 and
        # 0.89 -> 0.93 of DDP; rayworks' own tok/s +6% and +1%).
        zero.setdefault("reduce_scatter", False)
    if not use_gpu:
        for key in ("offload_optimizer", "offload_param"):
            if (zero.get(key) or {}).get("device", "none") != "none":
                raise ConfigError(f"deepspeed.zero_optimization.{key}: CPU workers already keep this state in "
                                  "memory; remove the offload or use GPU workers")
    # DeepSpeed prints its own progress every steps_per_print; rayworks reports on its own schedule.
    out.setdefault("steps_per_print", 10**9)
    out.setdefault("wall_clock_breakdown", False)
    return out
