"""Side effects only one worker should have: console lines, Prometheus and MLflow metrics, run files.

Rank 0 gets a :class:`Rank0`; every other rank a :class:`NullRank0` whose methods do
nothing, so the training loop calls the same methods on every rank with no
``if rank == 0`` branches (nanochat's ``DummyWandb`` pattern). Methods that collective
work precedes (probe logits, checkpoint files) take its results as arguments.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from rayworks.train.data import PROGRESS_FILE
from rayworks.train.loop import MODEL_CONFIG_FILE, PROBE_FILE, STATE_FILE, LoopConfig

if TYPE_CHECKING:
    import torch


class NullRank0:
    """Every other rank: the same calls, no effects."""

    def resumed(self, step: int, optimizer_steps: int) -> None:
        """A checkpoint was loaded."""

    def step0(self, val_loss: float | None) -> None:
        """The validation loss of the initial weights (reported as step 0)."""

    def window(self, out: dict[str, Any], num_steps: int, num_tokens: int, step_time_s: float) -> None:
        """A log window ended (metrics in ``out``)."""

    def probe(self, d: str, input_ids: "torch.Tensor", logits: "torch.Tensor") -> None:
        """The final model's logits on the probe input, to store in checkpoint directory ``d``."""

    def checkpoint_files(self, d: str, state: dict[str, Any], out: dict[str, Any]) -> None:
        """rayworks' own files of a checkpoint about to be reported from directory ``d``."""

    def checkpoint_reported(self, step: int) -> None:
        """Ray Train has the checkpoint of ``step``."""

    def progress(self, out: dict[str, Any], flops_per_token: float) -> None:
        """One console line for a reported step."""


class Rank0(NullRank0):
    """Rank 0: prints, Prometheus metrics, checkpoint metadata and progress.json."""

    def __init__(self, cfg: LoopConfig):
        from rayworks.train.metrics import TrainMetrics

        self.cfg = cfg
        self.metrics = TrainMetrics(cfg.run_name)
        self.tracker = tracker_for(cfg)

    def resumed(self, step: int, optimizer_steps: int) -> None:
        print(f"[rayworks] resumed from checkpoint at step {step} (optimizer steps {optimizer_steps})", flush=True)

    def step0(self, val_loss: float | None) -> None:
        self.tracker.log_metrics(0, {"val_loss": val_loss})

    def window(self, out: dict[str, Any], num_steps: int, num_tokens: int, step_time_s: float) -> None:
        self.metrics.record(out, num_steps, num_tokens, step_time_s)
        # Before the checkpoint that covers this step: the logged values are the ones reported to Ray Train.
        self.tracker.log_metrics(out["step"], {k: out.get(k) for k in TRACKED_METRICS})

    def probe(self, d: str, input_ids: "torch.Tensor", logits: "torch.Tensor") -> None:
        import torch

        torch.save({"input_ids": input_ids, "logits": logits}, os.path.join(d, PROBE_FILE))

    def checkpoint_files(self, d: str, state: dict[str, Any], out: dict[str, Any]) -> None:
        cfg = self.cfg
        with open(os.path.join(d, MODEL_CONFIG_FILE), "w") as fh:
            json.dump(cfg.model_config, fh, indent=2)
        meta = {"step": state["step"], "num_steps": cfg.num_steps, "train_loss": state["train_loss"],
                "val_loss": state["val_loss"], "val_loss_step0": state["val_loss_step0"],
                "data_digest": out["data_digest"], "num_tokens": state["num_tokens"],
                "optimizer_steps": out["optimizer_steps"], "resumed_from": state["resumed_from"],
                "zero_stage": cfg.zero_stage, "bf16": cfg.bf16,
                "prep": {"uri": cfg.prep.uri, "manifest_path": cfg.prep.manifest_path,
                         "manifest_sha256": cfg.prep.manifest_sha256, "tokenizer_dir": cfg.prep.tokenizer_dir},
                "run_name": cfg.run_name, "config_hash": cfg.config_hash, "work": cfg.work,
                "train_config": cfg.train_config,
                # A resubmitted job continues this MLflow run (rayworks.train.resume.Previous).
                "tracking_run_id": cfg.tracking.get("run_id")}
        with open(os.path.join(d, STATE_FILE), "w") as fh:
            json.dump(meta, fh, indent=2)

    def checkpoint_reported(self, step: int) -> None:
        from rayworks import storage

        # Read by the dataset factory on a restart (rayworks.train.data.TrainPlan.start_step).
        storage.write_json(storage.join(self.cfg.output_uri, PROGRESS_FILE), {"checkpoint_step": step})
        self.metrics.checkpoint()

    def progress(self, out: dict[str, Any], flops_per_token: float) -> None:
        tps = out["tokens_per_s"]
        print(f"[rayworks] step {out['step']}/{self.cfg.num_steps} loss {out['train_loss']:.4f}"
              + (f" val {out['val_loss']:.4f}" if out.get("val_loss") is not None else "")
              + f" lr {out['lr']:.2e} {tps:,.0f} tok/s"
              + (f" MFU {out['mfu']:.1%}" if out["mfu"] is not None else f" {tps * flops_per_token / 1e9:.2f} GFLOP/s"),
              flush=True)


TRACKED_METRICS = ("train_loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "model_flops_per_s", "mfu",
                   "num_tokens")


def tracker_for(cfg: LoopConfig):
    """Rank 0's MLflow tracker on the run the driver opened (rayworks.tracking.runs), or a null one."""
    from rayworks.tracking.runs import NullTracker, Tracker

    t = cfg.tracking
    if not t.get("uri"):
        return NullTracker()
    return Tracker(t["uri"], t.get("run_id"), who="train rank 0", timeout_s=t["timeout_s"],
                   retry_after_s=t["retry_after_s"], gap_uri=t.get("gap_uri"))


def for_rank(rank: int, cfg: LoopConfig) -> NullRank0:
    """Rank 0's side effects, or the null object."""
    return Rank0(cfg) if rank == 0 else NullRank0()
