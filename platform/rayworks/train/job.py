"""The train runner: ``run(job)`` builds a TorchTrainer around the DeepSpeed loop and exports.

Output layout under ``{storage}/train/{name}`` (or ``run.output_uri``)::

    ray_train/             Ray Train's run storage: checkpoint_XXXXXXXX/ (every rank's
                           DeepSpeed files + rayworks_state.json), its snapshot
    progress.json          last reported checkpoint step (where datasets restart)
    export/                Hugging Face directory (safetensors, config, tokenizer)
    manifest.json          kind: train, config_hash, inputs, losses, steps, export

Submitting the same run again resumes from its latest checkpoint (Ray Train finds
the snapshot under ray_train/) when it is the same work, and refuses otherwise
(``run.resume``, rayworks.train.resume); a worker that dies is restarted from the
latest checkpoint up to run.max_failures times.
"""

from __future__ import annotations

import functools
import time

from rayworks.config.base import config_hash
from rayworks.config.train import TrainJob
from rayworks import artifacts, storage
from rayworks.train.data import SplitIndex, TrainPlan, val_dataset
from rayworks.train.inputs import PrepInfo, check_job_inputs, num_steps
from rayworks.tracking import jobrun
from rayworks.train import mlflow_run
from rayworks.train.loop import LoopConfig, PrepRef
from rayworks.train.resume import RUN_DIR, prepare_output, work_identity


def loop_config(job: TrainJob, prep: PrepInfo, out: str, steps: int) -> LoopConfig:
    """The typed config every worker's loop receives."""
    from rayworks.train.model import llama_config_dict

    m = job.model
    model_cfg = llama_config_dict({"preset": m.preset, "init_from": m.init_from, "overrides": m.overrides(),
                                   "vocab_size": m.vocab_size}, prep.vocab_size, prep.seq_len,
                                  eos_token_id=prep.eos_token_id, pad_token_id=prep.pad_token_id)
    val_rows = 0
    if job.data.val_split:
        val_rows = prep.splits[job.data.val_split].num_rows
        if job.data.num_val_sequences:
            val_rows = min(val_rows, job.data.num_val_sequences)
    return LoopConfig(
        run_name=job.name, output_uri=out, ray_run_dir=storage.join(out, RUN_DIR), use_gpu=job.scaling.use_gpu,
        deepspeed=job.resolved_deepspeed(steps), model_config=model_cfg, init_from=m.init_from, seed=m.seed,
        attn_implementation=m.attn_implementation, gradient_checkpointing=m.gradient_checkpointing,
        seq_len=prep.seq_len, num_steps=steps, log_every=job.run.log_every_steps,
        eval_every=job.run.eval_every_steps, checkpoint_every=job.run.checkpoint_every_steps,
        has_val=val_rows >= job.scaling.num_workers, peak_flops_per_device=job.scaling.peak_flops_per_device,
        prep=PrepRef(uri=prep.uri, manifest_path=prep.manifest_path, manifest_sha256=prep.manifest_sha256,
                     tokenizer_dir=prep.tokenizer_dir),
        config_hash=config_hash(job), work=work_identity(job), train_config=job.model_dump(mode="json"))


def build_trainer(job: TrainJob, prep: PrepInfo, out: str, steps: int, tracking: dict | None = None):
    """The TorchTrainer for a run (datasets, scaling, failure and checkpoint config)."""
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from rayworks.train.loop import train_loop

    from ray.data import DataContext

    # Per-rank datasets would print one progress bar each; the loop reports progress itself.
    DataContext.get_current().enable_progress_bars = False
    cfg = loop_config(job, prep, out, steps)
    if tracking:  # rank 0 logs to the MLflow run the driver opened (rayworks.train.mlflow_run)
        import dataclasses

        cfg = dataclasses.replace(cfg, tracking=tracking)
    split = prep.splits[job.data.train_split]
    plan = TrainPlan(index=SplitIndex(tuple(split.shards), tuple(split.rows), prep.seq_len),
                     num_workers=job.scaling.num_workers, micro_batch=cfg.micro_batch,
                     grad_accum=cfg.grad_accum, num_steps=steps, seed=job.data.seed,
                     shuffle=job.data.shuffle, output_uri=out, checkpoint_every=job.run.checkpoint_every_steps)
    # Callables: Ray Train calls them each time it (re)starts the worker group, so a restart's
    # datasets begin at the last checkpoint (rayworks.train.data explains the order).
    datasets = {f"train_{r}": functools.partial(plan.rank_dataset, r) for r in range(job.scaling.num_workers)}
    if cfg.has_val:
        vs = prep.splits[job.data.val_split]
        vindex = SplitIndex(tuple(vs.shards), tuple(vs.rows), prep.seq_len)
        for r in range(job.scaling.num_workers):
            datasets[f"val_{r}"] = functools.partial(val_dataset, vindex, r, job.scaling.num_workers,
                                                     job.data.num_val_sequences)
    s = job.scaling
    resources = {"CPU": s.num_cpus_per_worker, **s.resources_per_worker}
    if s.use_gpu:
        resources["GPU"] = s.num_gpus_per_worker
    return TorchTrainer(
        # The typed config is bound here (Ray Train's train_loop_config takes only a plain dict).
        functools.partial(train_loop, cfg),
        scaling_config=ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources,
                                     accelerator_type=s.accelerator_type),
        torch_config=TorchConfig(backend="nccl" if s.use_gpu else "gloo"),
        run_config=RunConfig(name=RUN_DIR, storage_path=out,
                             failure_config=FailureConfig(max_failures=job.run.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=job.run.num_checkpoints_to_keep)),
        datasets=datasets,
        # Every dataset is per-rank and unsplit; order matters (rows carry their step).
        dataset_config=DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True)),
    )


def run(job: TrainJob) -> dict:
    """Trains, exports and writes the manifest; returns the manifest."""
    from rayworks.rayinit import ensure_ray, warn_if_no_room

    spec = job.cluster_spec()
    prep = check_job_inputs(job)
    out = job.artifact_uri(spec)
    steps = num_steps(job, prep)
    artifacts.verify_before_use(prep.uri, storage.join(out, "inputs_verified.json"), "data.prep_uri")
    # Before any cluster work: a run resumes only checkpoints of the same work (rayworks.train.resume).
    start = prepare_output(job, work_identity(job), prep.manifest_sha256, out)
    need = job.scaling.num_workers * job.scaling.num_cpus_per_worker
    ensure_ray(need)
    warn_if_no_room(need, f"{job.scaling.num_workers} training workers")
    ds = job.resolved_deepspeed(steps)
    print(f"[rayworks] train {job.name!r}: {steps} steps x {ds['train_batch_size']} sequences x {prep.seq_len} "
          f"tokens, {job.scaling.num_workers} {'GPU' if job.scaling.use_gpu else 'CPU'} workers, ZeRO stage "
          f"{ds['zero_optimization'].get('stage', 0)}")
    print(f"[rayworks]   output: {out} ({start})")
    print(f"[rayworks]   dashboard: {spec.dashboard_url}/#/train (Ray dashboard, 'Train' tab)")
    tracker, tracking = mlflow_run.open_run(job, spec, prep, out, steps, loop_config(job, prep, out, steps))
    t0 = time.time()
    result = build_trainer(job, prep, out, steps, tracking).fit()
    if result.error:
        jobrun.close(tracker, None, ok=False)
        raise result.error
    ckpt = result.checkpoint
    if ckpt is None:
        raise RuntimeError("training finished without a checkpoint")
    ckpt_uri = _uri(ckpt)
    meta = storage.read_json(storage.join(ckpt_uri, "rayworks_state.json"))
    export_dir = storage.join(out, "export")
    export = None
    if job.run.export:
        export = _export_remote(ckpt_uri, export_dir, job.run.export_dtype)
        print(f"[rayworks]   export: {export_dir} (probe logit diff {export.get('probe_max_abs_logit_diff')})")
    ck_rel = ckpt_uri[len(out.rstrip("/")) + 1:] if ckpt_uri.startswith(out.rstrip("/") + "/") else None
    outputs = [{**f, "path": f"{ck_rel}/{f['path']}"} for f in artifacts.describe_files(ckpt_uri)] if ck_rel else []
    if export:
        outputs.append(artifacts.file_entry(out, "export/" + artifacts.MANIFEST))
    manifest = {
        "kind": "train", "name": job.name, "config": job.model_dump(mode="json"), "config_hash": config_hash(job),
        "inputs": [{"role": "prep", "path": prep.manifest_path, "sha256": prep.manifest_sha256}],
        "outputs": outputs, "steps": meta["step"], "optimizer_steps": meta["optimizer_steps"],
        "num_tokens": meta["num_tokens"],
        "train_loss": meta["train_loss"], "val_loss": meta["val_loss"], "val_loss_step0": meta["val_loss_step0"],
        "data_digest": meta["data_digest"], "resumed_from": meta["resumed_from"],
        "checkpoint": ckpt_uri,
        "export": export_dir if export else None, "train_seconds": round(time.time() - t0, 1),
        "tracking": mlflow_run.register(tracker, job, export_dir if export else None, prep),
        "versions": artifacts.versions("train"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    storage.write_json(storage.join(out, "manifest.json"), manifest)
    jobrun.close(tracker, storage.join(out, "manifest.json"))
    print(f"[rayworks] done: step {meta['step']}, train loss {meta['train_loss']:.4f}"
          + (f", val loss {meta['val_loss']:.4f} (step 0: {meta['val_loss_step0']:.4f})" if meta["val_loss"] else ""))
    return manifest


def _uri(ckpt) -> str:
    """A Ray Checkpoint's location as a URI (its filesystem's scheme + path)."""
    scheme = getattr(ckpt.filesystem, "type_name", "local")
    if scheme == "local":
        return ckpt.path
    return f"{ {'s3': 's3', 'gcs': 'gs'}.get(scheme, scheme)}://{ckpt.path}"


def _export_remote(ckpt: str, out: str, dtype: str) -> dict:
    """Runs the export as a Ray task, so a large model consolidates on a worker, not the job driver."""
    import ray

    from rayworks.train.export import export_checkpoint

    task = ray.remote(num_cpus=1)(export_checkpoint)
    return ray.get(task.options(runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}}).remote(ckpt, out, None, dtype))

