"""A training run's MLflow run, on the driver: open (or continue), params, registration, close.

Why the MLflow client on rank 0, and not a Ray Train callback: Ray 2.60's Train V2 has no
MLflow callback, and its user callbacks run on the controller, which sees only what the
workers report, when it polls them (every ~2 s), and not at all for the reports of a worker
that dies before the poll. Rank 0 has every value the moment it reports it; the driver (this
module) owns what happens once per run. So:

- the driver opens the run before training, or continues the run whose id the latest
  checkpoint records (a resubmitted job), and logs the params and the DeepSpeed JSON;
- the run id travels to every worker in the loop config and into every checkpoint's
  ``rayworks_state.json``; a worker group Ray Train restarts gets the same loop config;
- rank 0 logs each reported step with ``step=`` and skips steps the run already holds
  (rayworks.tracking.runs), so a replay from an earlier checkpoint adds no duplicate;
- after training the driver registers the export as a model version and uploads the
  train manifest, whose ``tracking`` section names the run, the version and the gap.

Every MLflow call goes through rayworks.tracking.runs.Tracker: a server that is down costs a
warning and a count, never the run.
"""

from __future__ import annotations

import json
from typing import Any

from rayworks import artifacts, storage
from rayworks.tracking.runs import GAP_FILE, NullTracker, for_job
from rayworks.train.resume import RUN_DIR, SNAPSHOT, latest_checkpoint


def open_run(job, spec, prep, out: str, steps: int, cfg) -> tuple[NullTracker, dict[str, Any]]:
    """(driver tracker, what rank 0 needs: ``LoopConfig.tracking``)."""
    from rayworks.train.model import count_params

    prev = latest_checkpoint(out) if storage.exists(storage.join(out, RUN_DIR, SNAPSHOT)) else None
    gap_uri = storage.join(out, GAP_FILE)
    if prev is None and storage.exists(gap_uri):
        storage.delete_file(gap_uri)  # a fresh run starts with no gap
    prep_run = ((storage.read_json(prep.manifest_path).get("tracking") or {}).get("run_id")
                if storage.is_file(prep.manifest_path) else None)
    tracker = for_job(spec, job.name, job.tracking, run_id=prev.tracking_run_id if prev else None,
                      tags={"rayworks.kind": "train", "rayworks.output_uri": out}, who=f"train {job.name!r}",
                      gap_uri=gap_uri)
    if tracker.uri is None:
        return tracker, {}
    ds = cfg.deepspeed
    counts = count_params(cfg.model_config)
    tracker.log_params({
        "config": job.model_dump(mode="json"),
        "deepspeed": ds,                                   # effective: what deepspeed.initialize got
        "deepspeed_json": json.dumps(ds, sort_keys=True),
        "model": {**cfg.model_config, "num_parameters": counts["total"],
                  "num_non_embedding_parameters": counts["non_embedding"]},
        "world_size": job.scaling.num_workers, "num_steps": steps, "seq_len": prep.seq_len,
        "tokens_per_step": cfg.tokens_per_step, "versions": artifacts.versions("train")})
    tracker.set_tags({"rayworks.prep_manifest": prep.manifest_path,
                      "rayworks.prep_manifest_sha256": prep.manifest_sha256, "rayworks.prep_run_id": prep_run,
                      "rayworks.config_hash": cfg.config_hash})
    tracker.log_text(json.dumps(ds, indent=2, sort_keys=True), "deepspeed.json")
    tracker.log_text(json.dumps({"path": prep.manifest_path, "sha256": prep.manifest_sha256,
                                 "mlflow_run_id": prep_run}, indent=2), "prep_manifest_link.json")
    if tracker.run_id:
        from rayworks.tracking import experiment_name

        print(f"[rayworks]   mlflow: {tracker.uri} (experiment {experiment_name(spec)!r}, run {tracker.run_id})")
    t = spec.tracking
    return tracker, {"uri": tracker.uri, "run_id": tracker.run_id, "timeout_s": t.request_timeout_s,
                     "retry_after_s": t.retry_after_s, "gap_uri": gap_uri}


def register(tracker: NullTracker, job, export_dir: str | None, prep) -> dict[str, Any]:
    """Registers the export (if any); returns the manifest's ``tracking`` section (run, version, gap)."""
    version: dict[str, Any] = {}
    if export_dir and tracker.uri and tracker.run_id:
        from rayworks.tracking.registry import register_export

        def go():
            tracker.client.log_artifact(tracker.run_id, _local(storage.join(export_dir, artifacts.MANIFEST)),
                                        "export")
            version.update(register_export(tracker.uri, job.name, export_dir, tracker.run_id,
                                           prep.manifest_sha256))

        if tracker.call("model registration", go):
            print(f"[rayworks]   model registry: models:/{version['name']}/{version['version']}", flush=True)
    tracker.reload_gap()  # rank 0's share of the gap
    section = tracker.gap()
    if version:
        section["model_version"] = {"name": version["name"], "version": version["version"],
                                    "uri": f"models:/{version['name']}/{version['version']}"}
    if section.get("skipped_logs"):
        print(f"[rayworks]   tracking gap: {section['skipped_logs']} logs not sent to {section['uri']} "
              f"(steps {section['gap_steps'] or '-'}; {section['last_error']})", flush=True)
    return section


def _local(uri: str) -> str:
    if not storage.is_uri(uri):
        return uri
    import os
    import tempfile

    d = tempfile.mkdtemp(prefix="rw-mlflow-")
    path = os.path.join(d, storage.name_of(uri))
    with open(path, "wb") as fh:
        fh.write(storage.read_bytes(uri))
    return path
