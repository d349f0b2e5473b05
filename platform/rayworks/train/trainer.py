"""The training loop as named steps: setup, resume, evaluate, train_step, report, checkpoint.

One :class:`Trainer` per Ray Train worker, built from a :class:`~rayworks.train.loop.LoopConfig`.
:meth:`Trainer.train` is the whole order in a dozen lines: resume (or evaluate step 0),
then train steps, and on log/eval/checkpoint steps report the window, evaluate, save.
Side effects that only rank 0 has (prints, Prometheus metrics, metadata files,
progress.json) go through ``self.rank0``, a null object on every other rank.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from rayworks.train.loop import CKPT_TAG, LoopConfig, maybe_inject_fault, probe_input
from rayworks.train.rank0 import for_rank


@dataclass
class TrainState:
    """What a checkpoint carries beside DeepSpeed's own state (its ``client_state``)."""

    step: int = 0
    digests: list[str] = field(default_factory=list)  # per rank: hash chain of the data positions trained
    num_tokens: int = 0
    train_loss: float | None = None
    val_loss: float | None = None
    val_loss_step0: float | None = None
    resumed_from: list[int] = field(default_factory=list)


def micro_batches(iterator, micro_batch: int):
    yield from iterator.iter_batches(batch_size=micro_batch, batch_format="numpy", prefetch_batches=4,
                                     drop_last=False)


class Trainer:
    """One worker's DeepSpeed engine, data and state."""

    def __init__(self, cfg: LoopConfig):
        import ray.train

        self.cfg = cfg
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.rank0 = for_rank(self.rank, cfg)
        self.state = TrainState(digests=[""] * self.world)
        self._val: list[np.ndarray] = []

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Model, DeepSpeed engine, throughput constants."""
        import deepspeed
        import ray.train.torch
        import torch

        from rayworks.train.flops import flops_per_token, peak_flops
        from rayworks.train.model import build_model

        cfg = self.cfg
        # Random init straight on the GPU: a 1B model's init on the CPU takes longer than many steps.
        init_device = ray.train.torch.get_device() if cfg.use_gpu and not cfg.init_from else torch.device("cpu")
        with init_device:
            model = build_model(cfg.model_config, cfg.init_from, cfg.seed, cfg.attn_implementation)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=cfg.deepspeed)
        self.reduce_device = self.engine.device if cfg.use_gpu else "cpu"
        self.flops_per_token = flops_per_token(cfg.model_config, cfg.seq_len)
        self.peak = cfg.peak_flops_per_device or (peak_flops(torch.cuda.get_device_name()) if cfg.use_gpu else None)

    # ------------------------------------------------------------------ resume
    def resume(self) -> bool:
        """Loads Ray Train's latest checkpoint of this run, if any: engine state + TrainState."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if not ckpt:
            return False
        with ckpt.as_directory() as d:
            _, client = self.engine.load_checkpoint(d, tag=CKPT_TAG)
        # DeepSpeed hands back its own metadata keys too; keep ours only (it refuses its keys on save).
        known = {k: v for k, v in (client or {}).items() if k in TrainState.__dataclass_fields__}
        self.state = TrainState(**{**asdict(self.state), **known})
        self.state.resumed_from = list(self.state.resumed_from) + [self.state.step]
        self.rank0.resumed(self.state.step, int(self.engine.global_steps))
        return True

    # ------------------------------------------------------------------ evaluate
    def evaluate(self) -> float | None:
        """Mean validation loss over every rank's validation rows (None without validation)."""
        import ray.train
        import torch
        import torch.distributed as dist

        if not self.cfg.has_val:
            return None
        if not self._val:
            # The validation rows are few and the same each time: read them through Ray Data once.
            shard = ray.train.get_dataset_shard(f"val_{self.rank}")
            self._val.extend(b["input_ids"] for b in micro_batches(shard, self.cfg.micro_batch))
        engine = self.engine
        engine.module.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for arr in self._val:
                ids = torch.from_numpy(arr.astype(np.int64)).to(engine.device)
                total += engine(input_ids=ids, labels=ids).loss.float().item() * len(ids)
                count += len(ids)
        engine.module.train()
        t = torch.tensor([total, count], dtype=torch.float64, device=self.reduce_device)
        dist.all_reduce(t)
        return (t[0] / t[1]).item() if t[1] > 0 else None

    # ------------------------------------------------------------------ step
    def train_step(self, step: int, batches, digest):
        """One optimizer step (grad_accum micro batches); returns its mean loss as a 0-d tensor.

        The loss stays on the device (no .item()): a sync per step would stall GPU workers.
        """
        import torch

        total = torch.zeros((), device=self.engine.device)
        for _ in range(self.cfg.grad_accum):
            b = next(batches)
            while int(b["step"][0]) < step:  # rows before the resume point (see rayworks.train.data)
                b = next(batches)
            if int(b["step"][0]) != step or int(b["step"][-1]) != step or len(b["step"]) != self.cfg.micro_batch:
                raise RuntimeError(f"rank {self.rank}: data for step {int(b['step'][0])} arrived while training "
                                   f"step {step}; the data position is lost (was progress.json edited?)")
            digest.update(b["pos"].astype(np.int64).tobytes())
            ids = torch.from_numpy(b["input_ids"].astype(np.int64)).to(self.engine.device)
            loss = self.engine(input_ids=ids, labels=ids).loss
            self.engine.backward(loss)
            self.engine.step()
            total += loss.detach().float() / self.cfg.grad_accum
        self.state.num_tokens += self.cfg.tokens_per_step
        return total

    # ------------------------------------------------------------------ report
    def window_metrics(self, step: int, window_loss, window_steps: int, dt: float) -> dict:
        """Loss (mean over ranks), lr, throughput, MFU and grad norm of the last log window."""
        import torch
        import torch.distributed as dist

        from rayworks.train.flops import mfu

        t = torch.tensor([window_loss.item() / window_steps], dtype=torch.float64, device=self.reduce_device)
        dist.all_reduce(t)
        train_loss = (t / self.world).item()
        tps = self.cfg.tokens_per_step * window_steps / dt
        gn = self.engine.get_global_grad_norm()
        lr = self.scheduler.get_last_lr()[0] if self.scheduler else self.engine.optimizer.param_groups[0]["lr"]
        self.state.train_loss = train_loss
        return {"step": step, "train_loss": train_loss, "lr": float(lr), "tokens_per_s": tps,
                "model_flops_per_s": tps * self.flops_per_token,
                "mfu": mfu(tps, self.flops_per_token, self.world, self.peak),
                "grad_norm": float(gn) if gn is not None else None, "num_tokens": self.state.num_tokens,
                "optimizer_steps": int(self.engine.global_steps)}

    # ------------------------------------------------------------------ checkpoint
    def checkpoint(self, step: int, digest, out: dict) -> str:
        """Saves every rank's DeepSpeed state (+ rank 0's metadata) to a temporary directory; returns it."""
        import torch.distributed as dist

        digests = [None] * self.world
        dist.all_gather_object(digests, digest.hexdigest())
        self.state.step, self.state.digests = step, digests
        out["data_digest"] = hashlib.sha256("".join(digests).encode()).hexdigest()
        tmp = tempfile.mkdtemp(prefix=f"rw-ckpt-r{self.rank}-")
        self.engine.save_checkpoint(tmp, tag=CKPT_TAG, client_state=asdict(self.state))
        if step == self.cfg.num_steps:
            self.save_probe(tmp)
        self.rank0.checkpoint_files(tmp, asdict(self.state), out)
        return tmp

    def save_probe(self, d: str) -> None:
        """Logits of the trained model on a fixed input; the export is checked against them."""
        import torch

        engine = self.engine
        ids = probe_input(self.cfg.model_config["vocab_size"]).to(engine.device)
        engine.module.eval()
        with torch.no_grad():  # every rank runs it: ZeRO-3 gathers parameters collectively
            logits = engine(input_ids=ids).logits.float().cpu()
        engine.module.train()
        self.rank0.probe(d, ids.cpu(), logits)

    # ------------------------------------------------------------------ the loop
    def train(self) -> None:
        """setup -> resume (or evaluate step 0) -> steps, with reports, evaluations and checkpoints."""
        import ray.train
        import torch
        from ray.train import Checkpoint

        cfg = self.cfg
        self.setup()
        if not self.resume():
            self.state.val_loss = self.state.val_loss_step0 = self.evaluate()
            ray.train.report({"step": 0, "val_loss": self.state.val_loss})
            self.rank0.step0(self.state.val_loss)
        step = self.state.step
        # Chain from the checkpointed value, exactly as the run that wrote the checkpoint did.
        digest = hashlib.sha256(self.state.digests[self.rank].encode())
        batches = micro_batches(ray.train.get_dataset_shard(f"train_{self.rank}"), cfg.micro_batch) \
            if step < cfg.num_steps else iter(())
        window_loss, window_steps, t_window = torch.zeros((), device=self.engine.device), 0, time.perf_counter()
        while step < cfg.num_steps:
            step += 1
            maybe_inject_fault(step, self.rank, cfg)
            window_loss += self.train_step(step, batches, digest)
            window_steps += 1
            if not (cfg.is_log_step(step) or cfg.is_eval_step(step) or cfg.is_checkpoint_step(step)):
                continue
            if cfg.use_gpu:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t_window
            out = self.window_metrics(step, window_loss, window_steps, dt)
            if cfg.is_eval_step(step):
                out["val_loss"] = self.state.val_loss = self.evaluate()
            self.rank0.window(out, window_steps, cfg.tokens_per_step * window_steps, dt / window_steps)
            tmp = None
            if cfg.is_checkpoint_step(step):
                tmp = self.checkpoint(step, digest, out)
                digest = hashlib.sha256(digest.hexdigest().encode())
            ray.train.report({k: v for k, v in out.items() if v is not None},
                             checkpoint=Checkpoint.from_directory(tmp) if tmp else None,
                             checkpoint_dir_name=f"checkpoint_{step:08d}" if tmp else None)
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)
                self.rank0.checkpoint_reported(step)
            self.rank0.progress(out, self.flops_per_token)
            window_loss, window_steps, t_window = torch.zeros((), device=self.engine.device), 0, time.perf_counter()

