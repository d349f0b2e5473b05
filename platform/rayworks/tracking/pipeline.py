"""A pipeline run as an MLflow parent run with one nested run per stage.

The stages are separate Ray jobs, and a job that tracks itself (prep, train, generate) makes
its own run. Inside `rayworks run` that run *is* the stage's nested run: the pipeline opens
the parent run first and passes its id to each stage job in the job's runtime env
(:meth:`PipelineRun.env`; rayworks.tracking.runs tags the job's run with MLflow's
``mlflow.parentRunId``), and the job records the parent in its manifest. So the numbers of a
stage live once, in the run that made them, with the job's params and manifest beside them.

The pipeline itself makes a nested run only for a stage whose job made none in this pipeline
run:

- a **skipped** stage (or one whose job found its output already complete): a run tagged
  ``rayworks.status=skipped`` whose ``rayworks.output_run_id`` links the run that made the
  output, read from the output's manifest;
- a stage whose job does not track itself (serve, eval) or had ``tracking: off``, or whose
  server was down when it started: the counts of its manifest, since no other run holds them.

Every nested run carries ``rayworks.stage``, ``rayworks.status``, the manifest and its sha256,
and ``rayworks.output_run_id`` (its own id when it made the output). Never raises: a tracking
server that is down leaves a warning, not a failed pipeline.
"""

from __future__ import annotations

import time
from typing import Any

from rayworks import storage
from rayworks.tracking.runs import PARENT_ENV, PARENT_TAG, STAGE_ENV, Tracker, open_run

COUNT_KEYS = ("documents_read", "documents_written", "tokens", "sequences", "rows", "num_prompts",
              "num_outputs", "output_tokens")


def stage_facts(manifest: dict[str, Any]) -> dict[str, float]:
    """The metrics a pipeline-made nested run copies from an output that no MLflow run holds."""
    metrics: dict[str, float] = {}
    for k, v in (manifest.get("counts") or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[f"count.{k}"] = float(v)
    for k in ("steps", "num_tokens", "train_loss", "val_loss", "train_seconds", "seconds"):
        v = manifest.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics[k] = float(v)
    return metrics


def made_by(manifest: dict[str, Any], parent_run_id: str | None) -> tuple[str | None, bool]:
    """(the MLflow run that made this output, whether that run is a stage run of ``parent_run_id``)."""
    tr = manifest.get("tracking") or {}
    run = tr.get("run_id") or None
    return run, bool(run and parent_run_id and tr.get("parent_run_id") == parent_run_id)


class PipelineRun:
    """The parent run of one `rayworks run`; nothing (every method a no-op) when tracking is off or down.

    Args:
        spec: the cluster spec (its ``tracking`` section says where).
        name: the pipeline's name.
    """

    def __init__(self, spec, name: str):
        from rayworks.tracking import experiment_name, tracking_uri

        self.spec, self.name = spec, name
        self.uri = tracking_uri(spec)
        self.experiment = experiment_name(spec)
        self.run_id: str | None = None
        self.stages: dict[str, dict[str, Any]] = {}
        if self.uri is None:
            return
        t = spec.tracking
        self.timeout_s = t.request_timeout_s
        self.run_id, err = open_run(self.uri, self.experiment, f"pipeline {name}", timeout_s=self.timeout_s,
                                    tags={"rayworks.kind": "pipeline", "rayworks.pipeline": name})
        if self.run_id is None:
            print(f"[rayworks] WARNING: tracking server {self.uri} unreachable ({err}); the pipeline run is not "
                  "in MLflow (its jobs still try on their own)", flush=True)

    def env(self, stage: str) -> dict[str, str]:
        """What a stage job's runtime env gets so that its own run is nested under this one."""
        return {PARENT_ENV: self.run_id, STAGE_ENV: stage} if self.run_id else {}

    def _tracker(self, run_id: str | None) -> Tracker:
        return Tracker(self.uri, run_id, who=f"pipeline {self.name!r}", timeout_s=self.timeout_s, retry_after_s=0)

    def stage(self, stage: str, info: dict[str, Any]) -> dict[str, Any] | None:
        """Records a finished stage; ``info``: status (ran|skipped), manifest URI, manifest_sha256, seconds, job_id."""
        if self.run_id is None:
            return None
        man = storage.read_json(info["manifest"]) if storage.is_file(info["manifest"]) else {}
        maker, own = made_by(man, self.run_id)
        own = own and info["status"] == "ran"
        tags = {"rayworks.stage": stage, "rayworks.status": info["status"], "rayworks.manifest": info["manifest"],
                "rayworks.manifest_sha256": info.get("manifest_sha256") or "", "rayworks.job_id": info.get("job_id") or "",
                "rayworks.output_run_id": maker or "", "rayworks.kind": str(man.get("kind"))}
        mv = (man.get("tracking") or {}).get("model_version")
        if mv:
            tags["rayworks.model_version"] = mv["uri"]
        metrics = {} if maker else stage_facts(man)  # a run that made the output holds its numbers already
        if info.get("seconds") is not None:
            metrics["stage_seconds"] = float(info["seconds"])
        if own:
            run_id, made_here = maker, False
        else:
            run_id, _ = open_run(self.uri, self.experiment, f"{self.name}/{stage}", timeout_s=self.timeout_s,
                                 tags={PARENT_TAG: self.run_id, **tags})
            made_here = True
        tr = self._tracker(run_id)
        if own:
            tr.set_tags(tags)
        if metrics:
            # Logged directly at step 0: the job's own run may hold later steps (training), which
            # Tracker.log_metrics would take for a replay.
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            tr.call("stage metrics", lambda: tr.client.log_batch(
                run_id, metrics=[Metric(k, v, now, 0) for k, v in sorted(metrics.items())], synchronous=True))
        if made_here:
            tr.finish()
        self.stages[stage] = {"run_id": run_id, "output_run_id": maker, "own": own}
        return self.stages[stage]

    def finish(self, ok: bool = True, tags: dict[str, str] | None = None) -> dict[str, Any] | None:
        """Ends the parent run (FAILED when a stage failed); returns its id and the stages' runs."""
        if self.run_id is None:
            return None
        tr = self._tracker(self.run_id)
        if tags:
            tr.set_tags(tags)
        tr.finish("FINISHED" if ok else "FAILED")
        print(f"[rayworks] mlflow: pipeline run {self.run_id} ({len(self.stages)} nested stage runs) at {self.uri}",
              flush=True)
        return {"run_id": self.run_id, "stages": dict(self.stages)}
