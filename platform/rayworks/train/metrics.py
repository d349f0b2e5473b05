"""Prometheus metrics of a training run (rank 0 reports them; Ray adds the ``ray_`` prefix)."""

from __future__ import annotations

from rayworks import metrics as m

STEP_BUCKETS_S = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60]

GAUGES = {
    "train_loss": ("rayworks_train_loss", "Training loss (mean over the last log window, all workers)."),
    "val_loss": ("rayworks_train_val_loss", "Validation loss at the last evaluation."),
    "lr": ("rayworks_train_learning_rate", "Learning rate of the last step."),
    "grad_norm": ("rayworks_train_grad_norm", "Global gradient norm of the last step."),
    "tokens_per_s": ("rayworks_train_tokens_per_second", "Training throughput over the last log window (all workers)."),
    "model_flops_per_s": ("rayworks_train_model_flops_per_second", "Achieved model FLOP/s (6N + 12LHT per token)."),
    "mfu": ("rayworks_train_mfu_ratio", "Model FLOPs utilisation: achieved over peak bf16 FLOP/s (GPU only)."),
    "step": ("rayworks_train_step", "Optimizer step last completed."),
}


class TrainMetrics:
    """Gauges, counters and a step-time histogram tagged with job=train, run=<name>."""

    def __init__(self, run: str):
        self.tags = m.tags("train", run)
        self.gauges = {k: m.gauge(name, desc) for k, (name, desc) in GAUGES.items()}
        self.tokens = m.counter("rayworks_train_tokens_total", "Tokens trained (all workers).")
        self.steps = m.counter("rayworks_train_steps_total", "Optimizer steps completed.")
        self.ckpts = m.counter("rayworks_train_checkpoints_total", "Checkpoints saved and reported.")
        self.step_time = m.histogram("rayworks_train_step_duration_seconds", "Wall time of one optimizer step.",
                                     STEP_BUCKETS_S)

    def record(self, out: dict, num_steps: int, num_tokens: int, step_time_s: float) -> None:
        """One log window: the last values, plus the steps and tokens trained in it."""
        for key, g in self.gauges.items():
            if out.get(key) is not None:
                g.set(float(out[key]), tags=self.tags)
        self.tokens.inc(num_tokens, tags=self.tags)
        self.steps.inc(num_steps, tags=self.tags)
        self.step_time.observe(step_time_s, tags=self.tags)

    def checkpoint(self) -> None:
        self.ckpts.inc(1, tags=self.tags)
