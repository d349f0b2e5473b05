"""Resume only what is the same work: a checkpoint of other work is refused, run.resume: never starts fresh."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayworks.config.jobs import load_job_data
from rayworks.errors import ConfigError
from rayworks.train.resume import RUN_DIR, SNAPSHOT, changes, prepare_output, work_identity

PREP_SHA = "a" * 64


def job(tmp_path: Path, **over):
    d = {"kind": "train", "name": "t", "data": {"prep_uri": str(tmp_path / "prep")},
         "deepspeed": {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4,
                       "optimizer": {"type": "AdamW", "params": {"lr": 3e-3}}, "zero_optimization": {"stage": 2}},
         "scaling": {"num_workers": 2}, "run": {"num_steps": 10, "output_uri": str(tmp_path / "out")}}
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v}
    return load_job_data(d, "train.yaml", Path("/"))


def earlier_run(out: Path, j, step: int = 8, prep_sha: str = PREP_SHA, work: bool = True) -> Path:
    """What a finished submission leaves: Ray Train's snapshot, a checkpoint with rayworks' state, progress."""
    ckpt = out / RUN_DIR / f"checkpoint_{step:08d}"
    (ckpt / "ds").mkdir(parents=True)
    (ckpt / "ds" / "weights.pt").write_bytes(b"weights")
    state = {"step": step, "prep": {"manifest_sha256": prep_sha}}
    if work:
        state["work"] = work_identity(j)
    (ckpt / "rayworks_state.json").write_text(json.dumps(state))
    (out / RUN_DIR / SNAPSHOT).write_text("{}")
    (out / "progress.json").write_text(json.dumps({"checkpoint_step": step}))
    return ckpt


def test_same_work_run_longer_resumes(tmp_path):
    first = job(tmp_path)
    earlier_run(tmp_path / "out", first)
    longer = job(tmp_path, run={"num_steps": 40, "log_every_steps": 5, "export": False},
                 model={"gradient_checkpointing": True})
    msg = prepare_output(longer, work_identity(longer), PREP_SHA, str(tmp_path / "out"))
    assert msg.startswith("resuming from step 8")
    assert (tmp_path / "out" / RUN_DIR / "checkpoint_00000008").is_dir()


def test_changed_config_is_refused_naming_the_change_and_the_way_out(tmp_path):
    earlier_run(tmp_path / "out", job(tmp_path))
    j = job(tmp_path, deepspeed={"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}},
            scaling={"num_workers": 1})
    with pytest.raises(ConfigError) as e:
        prepare_output(j, work_identity(j), PREP_SHA, str(tmp_path / "out"))
    msg = str(e.value)
    assert "checkpoint at step 8" in msg
    assert "deepspeed.optimizer.params.lr: 0.003 -> 0.001" in msg and "scaling.num_workers: 2 -> 1" in msg
    assert "train_batch_size" not in msg  # unchanged keys are not listed
    assert "run.resume: never" in msg and "new `name`" in msg
    assert "\n" not in msg


def test_changed_prep_data_is_refused(tmp_path):
    j = job(tmp_path)
    earlier_run(tmp_path / "out", j)
    with pytest.raises(ConfigError, match=r"prep data: manifest sha256 aaaaaaaaaaaa\.\.\. -> bbbbbbbbbbbb"):
        prepare_output(j, work_identity(j), "b" * 64, str(tmp_path / "out"))


def test_resume_never_moves_the_earlier_run_aside(tmp_path):
    out = tmp_path / "out"
    earlier_run(out, job(tmp_path))
    j = job(tmp_path, deepspeed={"zero_optimization": {"stage": 1}}, run={"num_steps": 10, "resume": "never"})
    msg = prepare_output(j, work_identity(j), "b" * 64, str(out))
    assert msg.startswith("fresh run (run.resume: never")
    assert not (out / RUN_DIR).exists() and not (out / "progress.json").exists()
    (kept,) = (out / "superseded").iterdir()
    assert (kept / RUN_DIR / "checkpoint_00000008" / "ds" / "weights.pt").read_bytes() == b"weights"
    assert json.loads((kept / "progress.json").read_text()) == {"checkpoint_step": 8}
    assert str(kept) in msg


def test_fresh_output_resets_a_stale_progress_file(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "progress.json").write_text(json.dumps({"checkpoint_step": 40}))
    j = job(tmp_path)
    assert prepare_output(j, work_identity(j), PREP_SHA, str(out)) == "fresh run"
    assert json.loads((out / "progress.json").read_text()) == {"checkpoint_step": 0}


def test_checkpoints_from_before_work_identities_compare_the_prep_data_only(tmp_path):
    j = job(tmp_path)
    earlier_run(tmp_path / "out", j, work=False)
    other = job(tmp_path, deepspeed={"zero_optimization": {"stage": 3}})
    assert "predates" in prepare_output(other, work_identity(other), PREP_SHA, str(tmp_path / "out"))
    with pytest.raises(ConfigError, match="prep data"):
        prepare_output(other, work_identity(other), "c" * 64, str(tmp_path / "out"))


def test_changes_lists_added_removed_and_changed_leaves():
    old = {"a": {"b": 1, "c": 2}, "d": 3}
    new = {"a": {"b": 1, "c": 5, "e": "x"}}
    assert changes(old, new) == ["a.c: 2 -> 5", "a.e: unset -> 'x'", "d: 3 -> unset"]
    assert changes(old, old) == []


def test_submit_preflight_refuses_other_work_and_changes_nothing(tmp_path):
    import hashlib

    from rayworks.config.cluster import load_cluster_spec
    from rayworks.client.preflight import preflight
    from tests.unit.test_train_config import write_manifest

    prep = write_manifest(tmp_path / "prep")
    sha = hashlib.sha256((prep / "manifest.json").read_bytes()).hexdigest()
    out = tmp_path / "out"
    earlier_run(out, job(tmp_path), prep_sha=sha)
    spec = load_cluster_spec()
    preflight(job(tmp_path, run={"num_steps": 20}), spec)  # same work, longer: fine
    with pytest.raises(ConfigError, match=r"model.preset: 'tiny' -> '125m'"):
        preflight(job(tmp_path, model={"preset": "125m"}), spec)
    preflight(job(tmp_path, model={"preset": "125m"}, run={"num_steps": 10, "resume": "never"}), spec)
    assert (out / RUN_DIR / "checkpoint_00000008").is_dir()  # the preflight moves nothing; the job does
