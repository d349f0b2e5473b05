"""Training throughput: rayworks (Ray Train + DeepSpeed ZeRO-2) vs a plain PyTorch DDP loop.

Same model, same global batch, same number of CPU workers, same data (one prep output
made by tests/prepfixture.py), side by side in one run. The DDP baseline is launched
with ``torch.distributed.run`` over gloo. Both time the second half of the steps
(after warm-up) and exclude start-up. Prints tokens/s of each and the ratio.

    python tests/bench/bench_train.py                 # ~6 min on 2 cores
    python tests/bench/bench_train.py --seq-len 128 --micro-batch 8   # same tokens/step, shorter steps

The default shape is the demo's (sequences of 256 tokens, micro batch 4 per worker).
Shorter steps show more of rayworks' per-step cost (ZeRO-2's partitioned step, the data
position checks): on 2 cores the seq-128 ratio came out lower (0.85 against 0.96).
``--zero-stage 0`` runs rayworks without ZeRO partitioning: run after a stage-2 run in the same
session, it shows what ZeRO-2's partitioned step costs at this shape. ``--zero-config JSON`` adds
zero_optimization keys (``'{"reduce_scatter": true}'`` is DeepSpeed's own default, which rayworks
turns off on CPU workers). ``--workers 1`` leaves a core of the 2 to Ray's own processes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procs import install, owned

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2],
                    help="rayworks' ZeRO stage (the demo's is 2; 0 isolates what ZeRO's partitioned step costs)")
    ap.add_argument("--zero-config", default="{}", metavar="JSON",
                    help="more zero_optimization keys for rayworks, e.g. '{\"reduce_scatter\": false}'")
    ap.add_argument("--repeats", type=int, default=2,
                    help="alternate DDP and rayworks this many times; the ratio printed is the median")
    ap.add_argument("--prep", help="existing prep output (default: made in a temp dir)")
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def model_dims(a) -> dict:
    return {"hidden_size": a.hidden, "num_hidden_layers": a.layers, "num_attention_heads": 4,
            "num_key_value_heads": 4, "intermediate_size": 4 * a.hidden}


def ddp_worker(a) -> None:
    """One torchrun process: the plain DDP loop over the same shards (global positions in file order)."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from rayworks.train.model import build_model, llama_config_dict

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    m = json.load(open(os.path.join(a.prep, "manifest.json")))
    rows = np.concatenate([pq.read_table(os.path.join(a.prep, s["name"])).column("input_ids").combine_chunks()
                           .flatten().to_numpy().reshape(-1, a.seq_len) for s in m["splits"]["train"]["shards"]])
    cfg = llama_config_dict({"preset": "tiny", "overrides": model_dims(a)}, m["tokenizer"]["vocab_size"], a.seq_len)
    model = DDP(build_model(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr)
    g = a.micro_batch * world
    half = a.steps // 2
    for step in range(a.steps):
        if step == half:
            dist.barrier()
            t0 = time.perf_counter()
        lo = (step * g + rank * a.micro_batch) % (len(rows) - a.micro_batch)
        ids = torch.from_numpy(rows[lo:lo + a.micro_batch].astype(np.int64))
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    loss_v = loss.item()
    dist.barrier()
    dt = time.perf_counter() - t0
    if rank == 0:
        tps = (a.steps - half) * g * a.seq_len / dt
        Path(a.result).write_text(json.dumps({"tokens_per_s": tps, "loss": loss_v}))
    dist.destroy_process_group()


def run_ddp(a, prep: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        res = os.path.join(d, "ddp.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={a.workers}", "--standalone",
               __file__, "--ddp-worker", "--prep", prep, "--result", res, "--steps", str(a.steps),
               "--micro-batch", str(a.micro_batch), "--seq-len", str(a.seq_len), "--hidden", str(a.hidden),
               "--layers", str(a.layers), "--lr", str(a.lr)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}:{REPO / 'platform'}"}
        with owned(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL) as proc:
            if proc.wait() != 0:
                raise RuntimeError(f"DDP baseline failed (rc {proc.returncode}): {' '.join(cmd)}")
        return json.loads(Path(res).read_text())


def run_rayworks(a, prep: str, out: str) -> dict:
    import ray

    from rayworks.config.jobs import load_job_data
    from rayworks.train.inputs import check_job_inputs
    from rayworks.train.job import build_trainer

    half = a.steps // 2
    d = {"kind": "train", "name": "bench",
         "model": {"preset": "tiny", **{k: v for k, v in {"hidden_size": a.hidden, "num_layers": a.layers,
                                                          "num_attention_heads": 4, "num_key_value_heads": 4,
                                                          "intermediate_size": 4 * a.hidden}.items()}},
         "data": {"prep_uri": prep, "shuffle": False, "val_split": None},
         "deepspeed": {"train_micro_batch_size_per_gpu": a.micro_batch, "gradient_accumulation_steps": 1,
                       "gradient_clipping": 1.0, "optimizer": {"type": "AdamW", "params": {"lr": a.lr}},
                       "zero_optimization": {**json.loads(a.zero_config), "stage": a.zero_stage}},
         "scaling": {"num_workers": a.workers},
         "run": {"num_steps": a.steps, "log_every_steps": half, "eval_every_steps": a.steps,
                 "checkpoint_every_steps": a.steps, "output_uri": out, "export": False}}
    job = load_job_data(d, "bench", Path("/"))
    prep_info = check_job_inputs(job)
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=a.workers + 2, include_dashboard=False, log_to_driver=False)
    result = build_trainer(job, prep_info, out, a.steps).fit()
    if result.error:
        raise result.error
    return {"tokens_per_s": result.metrics["tokens_per_s"], "loss": result.metrics["train_loss"]}


def main(argv: list[str] | None = None) -> dict:
    a = parse(argv)
    if a.ddp_worker:  # a torchrun worker: torchrun owns it
        ddp_worker(a)
        return {}
    install()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="rw-bench-train-") as tmp:
        prep = a.prep
        if not prep:
            from tests.prepfixture import make_prep_output

            prep = str(make_prep_output(Path(tmp) / "prep", seq_len=a.seq_len, max_train_sequences=2000))
        runs = []
        for i in range(a.repeats):  # interleaved: a noisy spell hits both sides, not one
            ddp = run_ddp(a, prep)
            rw = run_rayworks(a, prep, str(Path(tmp) / f"out{i}"))
            runs.append((ddp, rw, rw["tokens_per_s"] / ddp["tokens_per_s"]))
    print(f"train bench: {a.workers} CPU workers, global batch {a.micro_batch * a.workers} x {a.seq_len} tokens, "
          f"Llama hidden {a.hidden} x {a.layers} layers, steps {a.steps // 2}..{a.steps} timed, {a.repeats} rounds")
    for i, (ddp, rw, r) in enumerate(runs):
        print(f"  round {i + 1}: DDP (torch.distributed.run, gloo) {ddp['tokens_per_s']:9,.0f} tok/s (loss "
              f"{ddp['loss']:.3f}); rayworks (Ray Train + DeepSpeed ZeRO-{a.zero_stage}"
              f"{'' if a.zero_config == '{}' else ' ' + a.zero_config}) {rw['tokens_per_s']:9,.0f} tok/s "
              f"(loss {rw['loss']:.3f}); ratio {r:.2f}")
    ratio = statistics.median(r for *_, r in runs)
    ddp = {"tokens_per_s": statistics.median(d["tokens_per_s"] for d, *_ in runs)}
    rw = {"tokens_per_s": statistics.median(w["tokens_per_s"] for _, w, _ in runs)}
    print(f"  ratio rayworks/DDP (median of {a.repeats}): {ratio:.2f}")
    return {"ddp_tokens_per_s": ddp["tokens_per_s"], "rayworks_tokens_per_s": rw["tokens_per_s"], "ratio": ratio}


if __name__ == "__main__":
    main()
