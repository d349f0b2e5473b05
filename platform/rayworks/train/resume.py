"""Resume only what is the same work (``run.resume``).

Submitting a run whose output already holds checkpoints continues from the latest one
(Ray Train finds its snapshot under ``ray_train/``). That is right for the same work
run longer, and wrong for anything else: new weights on top of a checkpoint trained
with another model shape, optimizer, data order, worker count or prep output would
mix two runs under one name. So every checkpoint records its *work identity* (the
config sections that shape the weights, plus the prep manifest's sha256), and before a
run starts the driver compares it with the job's:

- same work (only steps, logging, evaluation, checkpoint cadence or export differ):
  resume;
- different work, ``run.resume: auto``: refuse (ConfigError) naming what changed and
  how to start fresh;
- ``run.resume: never``: move the earlier run aside to ``superseded/<UTC time>/`` (nothing
  is deleted) and start at step 0.

A worker-group restart inside one run (Ray Train's failure handling) never passes
through here: it resumes from the run's own checkpoints.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rayworks.errors import ConfigError
from rayworks import storage
from rayworks.train.data import PROGRESS_FILE
from rayworks.train.loop import STATE_FILE

if TYPE_CHECKING:
    from rayworks.config.train import TrainJob

RUN_DIR = "ray_train"
SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's run state: its presence means "resume"
SUPERSEDED_DIR = "superseded"


def work_identity(job: "TrainJob") -> dict[str, Any]:
    """The parts of a train config that shape the weights a checkpoint holds.

    Left out on purpose: ``run`` (steps, epochs, cadences, output, export: a longer run
    of the same work resumes), ``data.prep_uri`` (the prep manifest's sha256 stands for the
    data wherever it lives), validation settings, per-worker resources, and settings that
    change speed or memory but not the result (gradient checkpointing, attention kernel,
    ZeRO's bucket and overlap settings, DeepSpeed's printing).
    """
    d = job.model_dump(mode="json")
    model = {k: v for k, v in d["model"].items() if k not in ("gradient_checkpointing", "attn_implementation")}
    ds = {k: v for k, v in d["deepspeed"].items() if k not in ("steps_per_print", "wall_clock_breakdown")}
    ds["zero_optimization"] = {"stage": (ds.get("zero_optimization") or {}).get("stage", 0)}
    return {"model": model, "deepspeed": ds,
            "data": {k: d["data"][k] for k in ("train_split", "shuffle", "seed")},
            "scaling": {k: d["scaling"][k] for k in ("num_workers", "use_gpu")}}


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``path: old -> new`` for every leaf that differs (``unset`` where a side lacks it)."""
    a, b = _flat(old), _flat(new)
    unset = object()

    def show(v: Any) -> str:
        return "unset" if v is unset else repr(v)

    return [f"{k}: {show(a.get(k, unset))} -> {show(b.get(k, unset))}"
            for k in sorted(set(a) | set(b)) if a.get(k, unset) != b.get(k, unset)]


@dataclass(frozen=True)
class Previous:
    """The latest checkpoint an earlier submission of this run left."""

    step: int
    uri: str
    work: dict[str, Any] | None          # None: written before rayworks recorded it
    prep_sha256: str | None
    tracking_run_id: str | None = None  # the MLflow run the checkpoint's steps were logged to


def latest_checkpoint(out: str) -> Previous | None:
    """The newest ``ray_train/checkpoint_XXXXXXXX`` that has rayworks' state file, if any."""
    from pyarrow import fs

    run_dir = storage.join(out, RUN_DIR)
    f, path = storage.filesystem(run_dir)
    infos = f.get_file_info(fs.FileSelector(path, allow_not_found=True))
    names = sorted(i.base_name for i in infos
                   if i.type == fs.FileType.Directory and re.fullmatch(r"checkpoint_\d{8}", i.base_name))
    for name in reversed(names):
        state = storage.join(run_dir, name, STATE_FILE)
        if storage.exists(state):
            meta = storage.read_json(state)
            return Previous(step=int(meta["step"]), uri=storage.join(run_dir, name), work=meta.get("work"),
                            prep_sha256=(meta.get("prep") or {}).get("manifest_sha256"),
                            tracking_run_id=meta.get("tracking_run_id"))
    return None


def check_same_work(job: "TrainJob", work: dict[str, Any], prep_sha256: str, out: str) -> Previous | None:
    """The checkpoint the run will resume from; ConfigError if it was trained on other work."""
    prev = latest_checkpoint(out)
    if prev is None:
        return None
    what = changes(prev.work, work) if prev.work is not None else []
    if prev.prep_sha256 and prev.prep_sha256 != prep_sha256:
        what.append(f"prep data: manifest sha256 {prev.prep_sha256[:12]}... -> {prep_sha256[:12]}... "
                    f"({job.data.prep_uri})")
    if what:
        raise ConfigError(
            f"train {job.name!r}: {out} holds a checkpoint at step {prev.step} of different work "
            f"({'; '.join(what)}); resuming would mix two runs. Start fresh under a new `name` "
            f"(or run.output_uri), or set run.resume: never to move the old run to "
            f"{storage.join(out, SUPERSEDED_DIR)}/ and train from step 0")
    return prev


def check_before_submit(job: "TrainJob", prep_sha256: str, out: str) -> None:
    """The client-side half of :func:`prepare_output`: refuse other work before submitting (no changes)."""
    if job.run.resume == "auto" and storage.exists(storage.join(out, RUN_DIR, SNAPSHOT)):
        check_same_work(job, work_identity(job), prep_sha256, out)


def move_aside(out: str) -> str:
    """Moves the earlier run (Ray Train's run dir, progress.json) to superseded/<UTC time>/; returns it."""
    dest = storage.join(out, SUPERSEDED_DIR, time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    for name in (RUN_DIR, PROGRESS_FILE):
        src = storage.join(out, name)
        if storage.exists(src):
            _move(src, storage.join(dest, name))
    return dest


def _move(src: str, dst: str) -> None:
    if not storage.is_remote(src):
        import os

        _, local_src = storage.filesystem(src)
        _, local_dst = storage.filesystem(dst)
        os.makedirs(os.path.dirname(local_dst), exist_ok=True)
        os.replace(local_src, local_dst)
        return
    # Object stores have no rename of a folder: copy, then delete the source.
    if storage.is_dir(src):
        storage.copy_dir(src, dst)
        storage.delete_dir(src)
    else:
        storage.write_bytes(dst, storage.read_bytes(src))
        storage.delete_file(src)


def prepare_output(job: "TrainJob", work: dict[str, Any], prep_sha256: str, out: str) -> str:
    """Readies ``out`` for a submission of ``job``; returns one line saying what it will do.

    Raises:
        ConfigError: when ``out`` holds checkpoints of different work and run.resume is auto.
    """
    if not storage.exists(storage.join(out, RUN_DIR, SNAPSHOT)):
        # A fresh run: a stale progress file must not move the data start.
        if storage.exists(storage.join(out, PROGRESS_FILE)):
            storage.write_json(storage.join(out, PROGRESS_FILE), {"checkpoint_step": 0})
        return "fresh run"
    if job.run.resume == "never":
        return f"fresh run (run.resume: never; the earlier run moved to {move_aside(out)})"
    prev = check_same_work(job, work, prep_sha256, out)
    if prev is None:
        return "resuming (the earlier submission left no checkpoint: from step 0)"
    if prev.work is None:
        return (f"resuming from step {prev.step} ({prev.uri} predates recorded work identities: only its "
                "prep data was compared)")
    return f"resuming from step {prev.step} (same work: {prev.uri})"
