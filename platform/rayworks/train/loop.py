"""What every training worker receives (:class:`LoopConfig`) and its entry point (:func:`train_loop`).

Runs inside each Ray Train worker. Ray Train has already set up torch.distributed
(gloo on CPU, nccl on GPU); DeepSpeed picks that group up. The driver
(``rayworks.train.job``) builds one typed, picklable :class:`LoopConfig`; the steps
of the loop (setup, resume, evaluate, step, checkpoint) are ``rayworks.train.trainer``.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

CKPT_TAG = "ds"
STATE_FILE = "rayworks_state.json"
MODEL_CONFIG_FILE = "model_config.json"
PROBE_FILE = "probe_logits.pt"
FAULT_ENV = "RAYWORKS_TRAIN_KILL_AT_STEP"  # "STEP[:RANK]": SIGKILL that worker once, for the resume test


@dataclass(frozen=True)
class PrepRef:
    """The prep output a run trains on (recorded in every checkpoint and the export)."""

    uri: str
    manifest_path: str
    manifest_sha256: str
    tokenizer_dir: str


@dataclass(frozen=True)
class LoopConfig:
    """Everything one worker's loop needs; built once by the driver, identical on every rank."""

    run_name: str
    output_uri: str
    ray_run_dir: str             # Ray Train's run storage under output_uri
    use_gpu: bool
    deepspeed: dict[str, Any]    # resolved: ready for deepspeed.initialize
    model_config: dict[str, Any]  # LlamaConfig kwargs
    init_from: str | None        # Hugging Face directory to load weights from
    seed: int
    attn_implementation: str
    gradient_checkpointing: bool
    seq_len: int
    num_steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    has_val: bool                # enough validation rows for every rank
    peak_flops_per_device: float | None
    prep: PrepRef
    config_hash: str             # of the whole job config (lineage)
    work: dict[str, Any] = field(default_factory=dict)  # what makes a checkpoint resumable (train.resume)
    train_config: dict[str, Any] = field(default_factory=dict)
    # MLflow, for rank 0: uri, run_id (opened by the driver), timeout_s, retry_after_s, gap_uri; {} = off.
    tracking: dict[str, Any] = field(default_factory=dict)

    @property
    def micro_batch(self) -> int:
        return self.deepspeed["train_micro_batch_size_per_gpu"]

    @property
    def grad_accum(self) -> int:
        return self.deepspeed["gradient_accumulation_steps"]

    @property
    def tokens_per_step(self) -> int:
        return self.deepspeed["train_batch_size"] * self.seq_len

    @property
    def zero_stage(self) -> int:
        return self.deepspeed.get("zero_optimization", {}).get("stage", 0)

    @property
    def bf16(self) -> bool:
        return bool((self.deepspeed.get("bf16") or {}).get("enabled"))

    def is_log_step(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.num_steps

    def is_eval_step(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.num_steps

    def is_checkpoint_step(self, step: int) -> bool:
        return step % self.checkpoint_every == 0 or step == self.num_steps


def probe_input(vocab_size: int, n: int = 16):
    """A fixed input whose logits the export is checked against."""
    import torch

    return (torch.arange(n, dtype=torch.long) * 7 + 3).remainder(vocab_size).unsqueeze(0)


def maybe_inject_fault(step: int, rank: int, cfg: LoopConfig) -> None:
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
    from rayworks import storage

    marker = storage.join(cfg.output_uri, f"fault_injected_step{at}")
    if storage.exists(marker):
        return
    last = (step - 1) // cfg.checkpoint_every * cfg.checkpoint_every
    snapshot = storage.join(cfg.ray_run_dir, "checkpoint_manager_snapshot.json")
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


STALE_LOCK_S = 600  # DeepSpeed's JIT op builds take seconds to a few minutes; a lock this old is orphaned


def check_extension_locks(max_age_s: float = STALE_LOCK_S) -> None:
    """Fails fast on an orphaned torch-extension build lock instead of hanging forever.

    DeepSpeed JIT-builds its ops (the CPU shared-memory allreduce, fused optimizers) through
    torch's cpp_extension, which takes ``<build dir>/lock`` for every load, even when the
    library is already built. A process killed inside that window (Ctrl-C, SIGKILL, an OOM
    kill) leaves the file behind, and every later worker waits on it with no message and no
    timeout. The lock is not ours to delete, so the error names it and the fix.
    """
    import glob

    from torch.utils.cpp_extension import get_default_build_root

    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    pattern = os.path.join(root, "*", "lock") if root else os.path.join(get_default_build_root(), "*", "*", "lock")
    now = time.time()
    for lock in sorted(glob.glob(pattern)):
        try:
            age = now - os.stat(lock).st_mtime
        except FileNotFoundError:  # released meanwhile
            continue
        if age > max_age_s:
            raise RuntimeError(
                f"{lock} is {age / 60:.0f} min old: a torch extension build (DeepSpeed's JIT ops) was killed "
                f"and left its lock, and every training worker would wait on it forever. Unless another job "
                f"on this node is starting right now, remove it (rm {lock}) and resubmit")


def own_ninja_first() -> None:
    """Puts this Python's ``bin`` folder first on PATH when it holds ``ninja``.

    torch's cpp_extension builds DeepSpeed's JIT ops (on CPU, the shared-memory comm op) with
    the first ``ninja`` on PATH. ninja 1.12+ hashes build commands differently from older
    ones, so a library built by one is rebuilt by the other (~30 s on 2 cores, every time the
    two alternate). ``make setup`` and ``rayworks up`` use the venv's; a cluster started
    another way (``ray start``, or ``ray.init`` from a shell without the venv on PATH) found
    the system's and rebuilt in each training job.
    """
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "")
    if os.path.isfile(os.path.join(bindir, "ninja")) and path.split(os.pathsep)[0] != bindir:
        os.environ["PATH"] = bindir + os.pathsep + path


def train_loop(cfg: LoopConfig) -> None:
    """Ray Train's train_loop_per_worker (bound to ``cfg`` with functools.partial by the driver)."""
    check_extension_locks()
    own_ninja_first()
    if not cfg.use_gpu:
        # Before the first deepspeed import: it picks its accelerator at import time (STACK.md pitfall 4).
        os.environ["DS_ACCELERATOR"] = "cpu"
    else:
        cuda_arch_list_for_deepspeed()
    from rayworks.train.trainer import Trainer

    Trainer(cfg).train()
