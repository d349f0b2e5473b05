"""The per-worker training loop: DeepSpeed engine, deterministic batches, reports, checkpoints.

Runs inside each Ray Train worker (``train_loop_per_worker``). Ray Train has already
set up torch.distributed (gloo on CPU, nccl on GPU); DeepSpeed picks that group up.
Everything the loop needs arrives in one plain dict built by ``rayworks.train.job``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import tempfile
import time

import numpy as np

CKPT_TAG = "ds"
STATE_FILE = "rayworks_state.json"
MODEL_CONFIG_FILE = "model_config.json"
PROBE_FILE = "probe_logits.pt"
FAULT_ENV = "RAYWORKS_TRAIN_KILL_AT_STEP"  # "STEP[:RANK]": SIGKILL that worker once, for the resume test


def probe_input(vocab_size: int, n: int = 16):
    """A fixed input whose logits the export is checked against."""
    import torch

    return (torch.arange(n, dtype=torch.long) * 7 + 3).remainder(vocab_size).unsqueeze(0)


def _micro_batches(iterator, micro_batch: int):
    for b in iterator.iter_batches(batch_size=micro_batch, batch_format="numpy", prefetch_batches=4,
                                   drop_last=False):
        yield b


def _maybe_inject_fault(step: int, rank: int, cfg: dict) -> None:
    """Test hook: with RAYWORKS_TRAIN_KILL_AT_STEP=STEP[:RANK], that worker SIGKILLs itself once.

    It first waits until Ray Train's controller has registered the last checkpoint
    (its snapshot names it): the controller collects reports when it polls the
    workers (every 2 s), and a worker that dies before that poll loses the report,
    so the run would resume one checkpoint earlier. That is correct behaviour (the
    data start has a one-checkpoint margin for it) but not the case the test pins down.
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    at, _, who = spec.partition(":")
    if step != int(at) or rank != int(who or 0):
        return
    from rayworks.train import storage

    marker = storage.join(cfg["output_uri"], f"fault_injected_step{at}")
    if storage.exists(marker):
        return
    last = (step - 1) // cfg["checkpoint_every"] * cfg["checkpoint_every"]
    snapshot = storage.join(cfg["ray_run_dir"], "checkpoint_manager_snapshot.json")
    deadline = time.time() + 120
    while last and time.time() < deadline:
        if storage.exists(snapshot) and f"checkpoint_{last:08d}" in storage.read_bytes(snapshot).decode():
            break
        time.sleep(0.5)
    storage.write_bytes(marker, f"rank {rank} pid {os.getpid()} killed itself at step {step}\n".encode())
    print(f"[rayworks] {FAULT_ENV}: rank {rank} (pid {os.getpid()}) sends itself SIGKILL at step {step}", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def cuda_arch_list_for_deepspeed() -> str | None:
    """Drops the arch suffixes ("9.0a") that DeepSpeed's JIT op builder cannot parse.

    Images built for Hopper often set TORCH_CUDA_ARCH_LIST=9.0a; DeepSpeed 0.19 then fails
    to build FusedAdam with "invalid literal for int(): '0a'". The plain arch builds the
    same kernels for these ops. Returns the value in effect.
    """
    value = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if not value:
        return value
    fixed = re.sub(r"(\d+\.\d+)[a-z]+", r"\1", value)
    if fixed != value:
        print(f"[rayworks] TORCH_CUDA_ARCH_LIST {value!r} -> {fixed!r} for DeepSpeed's op builder", flush=True)
        os.environ["TORCH_CUDA_ARCH_LIST"] = fixed
    return fixed


def train_loop(cfg: dict) -> None:
    """Ray Train's train_loop_per_worker. See rayworks.train.job.loop_config for ``cfg``."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if not cfg["use_gpu"]:
        # Before the first deepspeed import: it picks its accelerator at import time (STACK.md pitfall 4).
        os.environ["DS_ACCELERATOR"] = "cpu"
    else:
        cuda_arch_list_for_deepspeed()
    import deepspeed
    import torch
    import torch.distributed as dist

    from rayworks.train.flops import flops_per_token, mfu, peak_flops
    from rayworks.train.metrics import TrainMetrics
    from rayworks.train.model import build_model

    # Random init straight on the GPU: a 1B model's init on the CPU takes longer than many steps.
    init_device = ray.train.torch.get_device() if cfg["use_gpu"] and not cfg["init_from"] else torch.device("cpu")
    with init_device:
        model = build_model(cfg["model_config"], cfg["init_from"], cfg["seed"], cfg["attn_implementation"])
    if cfg["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=cfg["deepspeed"])
    device = engine.device
    ds = cfg["deepspeed"]
    mb, ga = ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]
    seq_len, num_steps = cfg["seq_len"], cfg["num_steps"]
    tokens_per_step = ds["train_batch_size"] * seq_len
    fpt = flops_per_token(cfg["model_config"], seq_len)
    peak = cfg["peak_flops_per_device"] or (peak_flops(torch.cuda.get_device_name()) if cfg["use_gpu"] else None)

    # Resume: model, optimizer, scheduler (DeepSpeed) + step, data digest, losses (client state).
    state = {"step": 0, "digests": [""] * world, "num_tokens": 0, "train_loss": None, "val_loss": None,
             "val_loss_step0": None, "resumed_from": []}
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            _, client = engine.load_checkpoint(d, tag=CKPT_TAG)
        # DeepSpeed hands back its own metadata keys too; keep ours only (it refuses its keys on save).
        state.update({k: v for k, v in (client or {}).items() if k in state})
        state["resumed_from"] = list(state["resumed_from"]) + [state["step"]]
        if rank == 0:
            print(f"[rayworks] resumed from checkpoint at step {state['step']} "
                  f"(optimizer steps {engine.global_steps})", flush=True)
    digest = hashlib.sha256(state["digests"][rank].encode())
    metrics = TrainMetrics(cfg["run_name"]) if rank == 0 else None

    def all_mean(values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=device if cfg["use_gpu"] else "cpu")
        dist.all_reduce(t)
        return (t / world).tolist()

    val_cache: list[np.ndarray] = []

    def evaluate() -> float | None:
        if not cfg["has_val"]:
            return None
        if not val_cache:
            # The validation rows are few and the same each time: read them through Ray Data once.
            val_cache.extend(b["input_ids"] for b in _micro_batches(ray.train.get_dataset_shard(f"val_{rank}"), mb))
        engine.module.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for arr in val_cache:
                ids = torch.from_numpy(arr.astype(np.int64)).to(device)
                total += engine(input_ids=ids, labels=ids).loss.float().item() * len(ids)
                count += len(ids)
        engine.module.train()
        t = torch.tensor([total, count], dtype=torch.float64, device=device if cfg["use_gpu"] else "cpu")
        dist.all_reduce(t)
        return (t[0] / t[1]).item() if t[1] > 0 else None

    step = state["step"]
    if step == 0:
        state["val_loss"] = state["val_loss_step0"] = evaluate()
        ray.train.report({"step": 0, "val_loss": state["val_loss"]})
    batches = _micro_batches(ray.train.get_dataset_shard(f"train_{rank}"), mb) if step < num_steps else iter(())
    window_loss, window_steps, t_window = torch.zeros((), device=device), 0, time.perf_counter()

    while step < num_steps:
        step += 1
        _maybe_inject_fault(step, rank, cfg)
        for _ in range(ga):
            b = next(batches)
            while int(b["step"][0]) < step:  # rows before the resume point (see rayworks.train.data)
                b = next(batches)
            if int(b["step"][0]) != step or int(b["step"][-1]) != step or len(b["step"]) != mb:
                raise RuntimeError(f"rank {rank}: data for step {int(b['step'][0])} arrived while training step "
                                   f"{step}; the data position is lost (was progress.json edited?)")
            digest.update(b["pos"].astype(np.int64).tobytes())
            ids = torch.from_numpy(b["input_ids"].astype(np.int64)).to(device)
            loss = engine(input_ids=ids, labels=ids).loss
            engine.backward(loss)
            engine.step()
            window_loss += loss.detach().float() / ga
        window_steps += 1
        state["num_tokens"] += tokens_per_step

        do_log = step % cfg["log_every"] == 0 or step == num_steps
        do_eval = step % cfg["eval_every"] == 0 or step == num_steps
        do_ckpt = step % cfg["checkpoint_every"] == 0 or step == num_steps
        if not (do_log or do_eval or do_ckpt):
            continue
        if cfg["use_gpu"]:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t_window
        (train_loss,) = all_mean([window_loss.item() / window_steps])
        tps = tokens_per_step * window_steps / dt
        gn = engine.get_global_grad_norm()
        out = {"step": step, "train_loss": train_loss, "lr": float(scheduler.get_last_lr()[0]) if scheduler
               else float(engine.optimizer.param_groups[0]["lr"]), "tokens_per_s": tps,
               "model_flops_per_s": tps * fpt, "mfu": mfu(tps, fpt, world, peak),
               "grad_norm": float(gn) if gn is not None else None, "num_tokens": state["num_tokens"],
               "optimizer_steps": int(engine.global_steps)}
        state["train_loss"] = train_loss
        if do_eval:
            out["val_loss"] = state["val_loss"] = evaluate()
        if metrics:
            metrics.record(out, window_steps, tokens_per_step * window_steps, dt / window_steps)
        checkpoint, tmp = None, None
        if do_ckpt:
            digests = [None] * world
            dist.all_gather_object(digests, digest.hexdigest())
            # Chain from the checkpointed value, exactly as a run resumed from this checkpoint will.
            digest = hashlib.sha256(digest.hexdigest().encode())
            state.update(step=step, digests=digests)
            out["data_digest"] = hashlib.sha256("".join(digests).encode()).hexdigest()
            tmp = tempfile.mkdtemp(prefix=f"rw-ckpt-r{rank}-")
            engine.save_checkpoint(tmp, tag=CKPT_TAG, client_state=dict(state))
            if step == num_steps:
                _save_probe(engine, cfg, tmp, rank)
            if rank == 0:
                _write_meta(tmp, cfg, state, out)
            checkpoint = Checkpoint.from_directory(tmp)
        ray.train.report({k: v for k, v in out.items() if v is not None}, checkpoint=checkpoint,
                         checkpoint_dir_name=f"checkpoint_{step:08d}" if checkpoint else None)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
            if rank == 0:
                from rayworks.train import storage

                # Read by the dataset factory on a restart (rayworks.train.data.TrainPlan.start_step).
                storage.write_json(storage.join(cfg["output_uri"], "progress.json"), {"checkpoint_step": step})
                metrics.checkpoint()
        if rank == 0:
            print(f"[rayworks] step {step}/{num_steps} loss {train_loss:.4f}"
                  + (f" val {out['val_loss']:.4f}" if out.get("val_loss") is not None else "")
                  + f" lr {out['lr']:.2e} {tps:,.0f} tok/s"
                  + (f" MFU {out['mfu']:.1%}" if out["mfu"] is not None else f" {tps * fpt / 1e9:.2f} GFLOP/s"),
                  flush=True)
        window_loss, window_steps, t_window = torch.zeros((), device=device), 0, time.perf_counter()


def _save_probe(engine, cfg: dict, d: str, rank: int) -> None:
    """Logits of the trained model on a fixed input; the export is checked against them."""
    import torch

    ids = probe_input(cfg["model_config"]["vocab_size"]).to(engine.device)
    engine.module.eval()
    with torch.no_grad():  # every rank runs it: ZeRO-3 gathers parameters collectively
        logits = engine(input_ids=ids).logits.float().cpu()
    engine.module.train()
    if rank == 0:
        torch.save({"input_ids": ids.cpu(), "logits": logits}, os.path.join(d, PROBE_FILE))


def _write_meta(d: str, cfg: dict, state: dict, out: dict) -> None:
    with open(os.path.join(d, MODEL_CONFIG_FILE), "w") as fh:
        json.dump(cfg["model_config"], fh, indent=2)
    meta = {"step": state["step"], "num_steps": cfg["num_steps"], "train_loss": state["train_loss"],
            "val_loss": state["val_loss"], "val_loss_step0": state["val_loss_step0"],
            "data_digest": out["data_digest"], "num_tokens": state["num_tokens"],
            "optimizer_steps": out["optimizer_steps"], "resumed_from": state["resumed_from"],
            "zero_stage": cfg["deepspeed"].get("zero_optimization", {}).get("stage", 0),
            "bf16": bool((cfg["deepspeed"].get("bf16") or {}).get("enabled")),
            "prep": cfg["prep"], "run_name": cfg["run_name"], "config_hash": cfg["config_hash"],
            "train_config": cfg["train_config"]}
    with open(os.path.join(d, STATE_FILE), "w") as fh:
        json.dump(meta, fh, indent=2)
