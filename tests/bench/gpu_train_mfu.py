"""GPU training throughput and MFU of rayworks' model on one GPU: DeepSpeed without Ray.

Builds the ``1b`` preset (Llama-3.2-1B shape, untied embeddings) with rayworks' own
model code, trains it in bf16 with DeepSpeed ZeRO (stage 2 by default) on random
tokens (nothing is downloaded), and prints tokens/s and MFU computed by
rayworks.train.flops (6N + 12LHT FLOPs per token over the GPU's peak bf16 FLOP/s).

    python tests/bench/gpu_train_mfu.py                       # ~1B, 30 steps, H100/H200: < 4 min
    python tests/bench/gpu_train_mfu.py --cpu                 # tiny preset, fp32, gloo: checks the script
    python tests/bench/gpu_train_mfu.py --adam deepspeed      # DeepSpeed's FusedAdam (JIT-builds its op)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "platform"))


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="tiny preset on CPU in fp32 (a smoke test of this script)")
    ap.add_argument("--preset", default=None, help="model preset (default: 1b, or tiny with --cpu)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=8, help="steps not timed")
    ap.add_argument("--micro-batch", type=int, default=None, help="sequences per step (default 8, 2 on CPU)")
    ap.add_argument("--seq-len", type=int, default=None, help="default 2048 (128 on CPU)")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--zero", type=int, default=2, choices=[0, 1, 2, 3])
    ap.add_argument("--adam", choices=["torch-fused", "deepspeed"], default="torch-fused",
                    help="torch-fused: torch.optim.AdamW(fused=True); deepspeed: DeepSpeed's FusedAdam")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--json", help="write the result here")
    return ap.parse_args(argv)


def main(argv=None) -> dict:
    a = parse(argv)
    preset = a.preset or ("tiny" if a.cpu else "1b")
    mb = a.micro_batch or (2 if a.cpu else 8)
    seq = a.seq_len or (128 if a.cpu else 2048)
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                 "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": os.environ.get("MASTER_PORT", "29533")}.items():
        os.environ.setdefault(k, v)
    if a.cpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    import deepspeed
    import torch

    from rayworks.train.flops import flops_per_token, peak_flops
    from rayworks.train.model import build_model, count_params, llama_config_dict

    deepspeed.init_distributed(dist_backend="gloo" if a.cpu else "nccl")
    cfg = llama_config_dict({"preset": preset}, a.vocab, seq, eos_token_id=0, pad_token_id=0)
    t0 = time.perf_counter()
    device = torch.device("cpu" if a.cpu else "cuda")
    with device:  # initialise on the GPU: a 1B model's random init on CPU takes longer than training
        model = build_model(cfg, attn_implementation="sdpa")
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if a.compile:
        model = torch.compile(model)
    params = {"lr": 3e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}
    if a.adam == "torch-fused" or a.cpu:
        params.update(torch_adam=True, **({} if a.cpu else {"fused": True}))
    ds_cfg = {"train_micro_batch_size_per_gpu": mb, "gradient_accumulation_steps": 1, "train_batch_size": mb,
              "gradient_clipping": 1.0, "optimizer": {"type": "AdamW", "params": params},
              "bf16": {"enabled": not a.cpu}, "zero_optimization": {"stage": a.zero, "overlap_comm": True,
                                                                    "contiguous_gradients": True},
              "steps_per_print": 10**9}
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_cfg)
    print(f"model {preset}: {count_params(cfg)['total'] / 1e9:.3f} B params, built in {time.perf_counter() - t0:.1f}s; "
          f"batch {mb} x {seq} tokens, ZeRO {a.zero}, adam {a.adam if not a.cpu else 'torch'}", flush=True)

    g = torch.Generator(device=device).manual_seed(0)
    sync = (lambda: None) if a.cpu else torch.cuda.synchronize
    losses = []
    for step in range(a.steps):
        if step == a.warmup:
            sync()
            t_start = time.perf_counter()
        ids = torch.randint(0, a.vocab, (mb, seq), device=device, generator=g)
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        if step % 10 == 0 or step == a.steps - 1:
            losses.append(round(loss.item(), 4))
            print(f"step {step} loss {losses[-1]}", flush=True)
    sync()
    dt = time.perf_counter() - t_start
    timed = a.steps - a.warmup
    tps = timed * mb * seq / dt
    fpt = flops_per_token(cfg, seq)
    name = "cpu" if a.cpu else torch.cuda.get_device_name()
    peak = peak_flops(name)
    res = {"device": name, "preset": preset, "params": count_params(cfg)["total"], "seq_len": seq,
           "micro_batch": mb, "zero_stage": a.zero, "adam": a.adam, "compile": a.compile,
           "tokens_per_s": round(tps, 1), "model_tflops_per_s": round(tps * fpt / 1e12, 2),
           "peak_tflops": peak / 1e12 if peak else None, "mfu": round(tps * fpt / peak, 4) if peak else None,
           "step_s": round(dt / timed, 4), "losses": losses,
           "max_memory_gb": None if a.cpu else round(torch.cuda.max_memory_allocated() / 2**30, 1)}
    print(json.dumps(res, indent=2))
    print(f"{name}: {tps:,.0f} tokens/s, {tps * fpt / 1e12:.1f} model TFLOP/s"
          + (f", MFU {tps * fpt / peak:.1%} of {peak / 1e12:.0f} TFLOP/s bf16" if peak else " (no peak known: CPU)"))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
