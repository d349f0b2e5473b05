"""A pipeline run as an MLflow parent run with one nested run per stage.

The stages are separate Ray jobs and each job's own run (a training run, with its metrics
and model version) is made by that job; the pipeline's nested stage runs describe the
stage *in this pipeline run*: whether it ran or was skipped, how long it took, the counts
and manifest of its output, and a link (tag ``rayworks.output_run_id``) to the run that made
that output. A skipped stage links the earlier run that made its output, read from the
output's manifest, so every stage of every pipeline run leads to where its numbers are.

Never raises: a tracking server that is down leaves a warning, not a failed pipeline.
"""

from __future__ import annotations

from typing import Any

from rayworks import storage

PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests runs by it
COUNT_KEYS = ("documents_read", "documents_written", "tokens", "sequences", "rows", "num_prompts",
              "num_outputs", "output_tokens")


def stage_facts(manifest: dict[str, Any]) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) a nested stage run gets from its output's manifest."""
    metrics: dict[str, float] = {}
    for k, v in (manifest.get("counts") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[f"count.{k}"] = float(v)
    for k in ("steps", "num_tokens", "train_loss", "val_loss", "train_seconds", "seconds"):
        v = manifest.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[k] = float(v)
    tr = manifest.get("tracking") or {}
    tags = {"rayworks.kind": str(manifest.get("kind")), "rayworks.output_run_id": tr.get("run_id") or ""}
    if tr.get("model_version"):
        tags["rayworks.model_version"] = tr["model_version"]["uri"]
    return metrics, tags


def log_pipeline(spec, name: str, stages: dict[str, dict[str, Any]], extra_tags: dict[str, str] | None = None
                 ) -> dict[str, Any] | None:
    """Logs a parent run ``pipeline <name>`` and a nested run per stage; returns ids, or None if off/down.

    Args:
        spec: the cluster spec (its ``tracking`` section says where).
        name: the pipeline's name.
        stages: stage -> {status: ran|skipped, manifest: URI, manifest_sha256, seconds?, job_id?}, in order.
        extra_tags: more tags for the parent run (the API URL, the served model).
    """
    from rayworks.tracking import experiment_name, tracking_uri
    from rayworks.tracking.runs import Tracker, open_run

    uri = tracking_uri(spec)
    if uri is None:
        return None
    t = spec.tracking
    parent, err = open_run(uri, experiment_name(spec), f"pipeline {name}",
                           tags={"rayworks.kind": "pipeline", "rayworks.pipeline": name, **(extra_tags or {})},
                           timeout_s=t.request_timeout_s)
    if parent is None:
        print(f"[rayworks] WARNING: tracking server {uri} unreachable ({err}); the pipeline run is not in MLflow",
              flush=True)
        return None
    out = {"run_id": parent, "stages": {}}
    for stage, info in stages.items():
        man = storage.read_json(info["manifest"]) if storage.is_file(info["manifest"]) else {}
        metrics, tags = stage_facts(man)
        rid, _ = open_run(uri, experiment_name(spec), f"{name}/{stage}", timeout_s=t.request_timeout_s,
                          tags={PARENT_TAG: parent, "rayworks.stage": stage, "rayworks.status": info["status"],
                                "rayworks.manifest": info["manifest"],
                                "rayworks.manifest_sha256": info.get("manifest_sha256") or "",
                                "rayworks.job_id": info.get("job_id") or "", **tags})
        tr = Tracker(uri, rid, who=f"pipeline {name!r}", timeout_s=t.request_timeout_s, retry_after_s=0)
        if info.get("seconds") is not None:
            metrics["stage_seconds"] = float(info["seconds"])
        tr.log_metrics(0, metrics)
        tr.finish()
        out["stages"][stage] = {"run_id": rid, "output_run_id": tags["rayworks.output_run_id"] or None}
    tr = Tracker(uri, parent, who=f"pipeline {name!r}", timeout_s=t.request_timeout_s, retry_after_s=0)
    tr.finish()
    print(f"[rayworks] mlflow: pipeline run {parent} ({len(out['stages'])} nested stage runs) at {uri}", flush=True)
    return out
