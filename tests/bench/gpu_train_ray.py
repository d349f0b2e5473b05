"""The GPU path of the real jobs on one machine: prep, then Ray Train + DeepSpeed (nccl, bf16, fused Adam).

Builds the demo corpus, runs `jobs/prep.py` and `jobs/train.py` exactly as a Ray job
would (each starts a local Ray instance when none is running), then runs
`gpu_train_mfu.py` (the same model and batch with DeepSpeed alone, no Ray) in the same
call, and prints tokens/s, MFU and the ratio of the two. Needs no network.

    python tests/bench/gpu_train_ray.py                  # 1b preset, 1 GPU worker, seq 2048, micro batch 16
    python tests/bench/gpu_train_ray.py --cpu            # tiny preset, 2 CPU workers: checks this script
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
STEP_LINE = re.compile(r"\[rayworks\] step (\d+)/(\d+) .*? ([\d,]+) tok/s(?: MFU ([\d.]+)%)?")


def sh(cmd: list[str], log: Path) -> str:
    """Runs cmd, echoing and saving its output; raises with the tail on failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    print("$ " + " ".join(cmd), flush=True)
    out = []
    with subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as p:
        with open(log, "w") as fh:
            for line in p.stdout:
                fh.write(line)
                out.append(line)
                if "[rayworks]" in line or "error" in line.lower() or "MFU" in line or "tokens/s" in line:
                    print("  " + line.rstrip(), flush=True)
    if p.returncode != 0:
        raise SystemExit(f"failed (rc {p.returncode}): {' '.join(cmd)}\n{''.join(out[-40:])}")
    return "".join(out)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="tiny preset on 2 CPU workers (a smoke test of this script)")
    ap.add_argument("--workdir", default="/tmp/rw-gpu-train")
    ap.add_argument("--preset", default=None)
    ap.add_argument("--corpus-mb", type=float, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--micro-batch", type=int, default=None)
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("--no-baseline", action="store_true", help="skip the DeepSpeed-without-Ray run")
    a = ap.parse_args(argv)
    cpu = a.cpu
    preset = a.preset or ("tiny" if cpu else "1b")
    steps = a.steps or (12 if cpu else 40)
    mb = a.micro_batch or (4 if cpu else 16)
    seq = a.seq_len or (128 if cpu else 2048)
    vocab = a.vocab or (2048 if cpu else 32000)
    workers = 2 if cpu else 1
    log_every = max(1, steps // 4)
    w = Path(a.workdir)
    w.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    from rayworks.data.corpus import build_python_docs

    build_python_docs(w / "corpus", size_mb=a.corpus_mb or (4 if cpu else 24))
    prep_cfg = {"kind": "prep", "name": "gpu-docs",
                "inputs": [{"path": str(w / "corpus" / "*.jsonl"), "format": "jsonl", "text_field": "text"}],
                "tokenizer": {"vocab_size": vocab, "sample_mb": 8}, "seq_len": seq, "val_fraction": 0.02,
                "output_uri": str(w / "prep"), "execution": {"num_workers": max(2, (os.cpu_count() or 2) // 2)}}
    (w / "prep.yaml").write_text(yaml.safe_dump(prep_cfg))
    sh([sys.executable, "jobs/prep.py", "--config", str(w / "prep.yaml")], w / "prep.log")
    t_prep = time.time() - t0

    train_cfg = {"kind": "train", "name": "gpu-1b", "model": {"preset": preset},
                 "data": {"prep_uri": str(w / "prep"), "num_val_sequences": 16},
                 "deepspeed": {"train_batch_size": mb * workers, "train_micro_batch_size_per_gpu": mb,
                               "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
                               "optimizer": {"type": "AdamW", "params": {"lr": 3e-4, "betas": [0.9, 0.95],
                                                                         "weight_decay": 0.1}},
                               "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10,
                                                                            "warmup_max_lr": "auto"}},
                               "bf16": {"enabled": "auto"},
                               "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True}},
                 "scaling": {"num_workers": workers, "use_gpu": not cpu, "num_cpus_per_worker": 1},
                 "run": {"num_steps": steps, "log_every_steps": log_every, "eval_every_steps": steps,
                         "checkpoint_every_steps": steps, "output_uri": str(w / "train"), "export": cpu}}
    (w / "train.yaml").write_text(yaml.safe_dump(train_cfg))
    t1 = time.time()
    out = sh([sys.executable, "jobs/train.py", "--config", str(w / "train.yaml")], w / "train.log")
    t_train = time.time() - t1
    # Ray's progress-bar redraws can repeat a worker's line: one window per step.
    windows = sorted({int(m[1]): (int(m[1]), float(m[3].replace(",", "")), float(m[4]) / 100 if m[4] else None)
                      for m in STEP_LINE.finditer(out)}.values())
    if len(windows) < 2:
        raise SystemExit(f"expected step lines in the train log, got {windows}")
    steady = windows[1:]  # the first window holds DeepSpeed's first-step setup
    ray_tps = statistics.mean(t for _, t, _ in steady)
    ray_mfu = statistics.mean(m for *_, m in steady) if steady[0][2] is not None else None
    res = {"preset": preset, "seq_len": seq, "micro_batch": mb, "workers": workers, "steps": steps,
           "prep_s": round(t_prep), "train_job_s": round(t_train), "windows": windows,
           "ray_tokens_per_s": round(ray_tps, 1), "ray_mfu": ray_mfu}
    if not a.no_baseline:
        cmd = [sys.executable, "tests/bench/gpu_train_mfu.py", "--preset", preset, "--micro-batch", str(mb),
               "--seq-len", str(seq), "--vocab", str(vocab), "--steps", str(min(steps, 30)), "--zero", "2",
               "--json", str(w / "baseline.json")] + (["--cpu"] if cpu else ["--adam", "deepspeed"])
        sh(cmd, w / "baseline.log")
        base = json.loads((w / "baseline.json").read_text())
        res.update(baseline_tokens_per_s=base["tokens_per_s"], baseline_mfu=base["mfu"],
                   ratio=round(ray_tps / base["tokens_per_s"], 3))
    print("RESULT " + json.dumps(res), flush=True)
    print(f"\nrayworks train job (Ray Train + DeepSpeed ZeRO-2, {'gloo/fp32' if cpu else 'nccl/bf16/FusedAdam'}): "
          f"{ray_tps:,.0f} tok/s" + (f", MFU {ray_mfu:.1%}" if ray_mfu else ""))
    if "ratio" in res:
        print(f"DeepSpeed alone, same model and batch: {res['baseline_tokens_per_s']:,.0f} tok/s"
              + (f", MFU {res['baseline_mfu']:.1%}" if res["baseline_mfu"] else "")
              + f"\nratio rayworks / DeepSpeed alone: {res['ratio']:.2f}")
    return res


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "platform"))
    main()
