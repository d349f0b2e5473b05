"""The MLflow run of a job that logs its results once, at the end (prep, generate).

A training run logs at every step from rank 0 (rayworks.train.mlflow_run); a prep or
generate job has one set of results, known when its output is complete. Its run has the
same life either way:

1. :func:`start` opens the run before the work (so a failed job leaves a FAILED run, and a
   job inside `rayworks run` is that pipeline run's nested stage run: rayworks.tracking.runs
   reads the parent from the env), and logs the flattened config and the versions as params;
2. :func:`results` logs the job's numbers and returns the manifest's ``tracking`` section
   (the run id, and the gap when the server was down: what a skipped log cost);
3. :func:`close` uploads the manifest, which now names the run, and ends the run.

Every call goes through :class:`rayworks.tracking.runs.Tracker`: a server that is down costs
one warning and a count in the manifest, never the job.
"""

from __future__ import annotations

import re
from typing import Any

from rayworks import artifacts
from rayworks.tracking.runs import NullTracker, for_job

_BAD_KEY = re.compile(r"[^A-Za-z0-9_.\-/ ]")  # what MLflow accepts in a metric name


def numeric_metrics(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested numbers -> ``{"a.b": 1.0}`` as MLflow metrics; text, None, lists and booleans are left out.

    Keys are made valid MLflow names (other characters become ``_``): counts keyed by user-given
    reasons or languages must not fail the log.
    """
    out: dict[str, float] = {}
    for k, v in values.items():
        key = _BAD_KEY.sub("_", f"{prefix}.{k}" if prefix else str(k))
        if isinstance(v, dict):
            out.update(numeric_metrics(v, key))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:  # v == v: not NaN
            out[key] = float(v)
    return out


def rates(seconds: float, **amounts: float) -> dict[str, float]:
    """``{"<amount>_per_s": amount / seconds}`` for each amount (nothing for a zero duration)."""
    if seconds <= 0:
        return {}
    return {f"{k}_per_s": v / seconds for k, v in amounts.items()}


def start(spec, job, kind: str, output_uri: str, tags: dict[str, Any] | None = None) -> NullTracker:
    """Opens the job's run (``job.tracking`` false, or no server for the spec: a null tracker) and logs its params."""
    tracker = for_job(spec, job.name, getattr(job, "tracking", True),
                      tags={"rayworks.kind": kind, "rayworks.output_uri": output_uri, **(tags or {})},
                      who=f"{kind} {job.name!r}")
    if tracker.uri is None:
        return tracker
    tracker.log_params({"config": job.model_dump(mode="json"), "versions": artifacts.versions(kind)})
    if tracker.run_id:
        from rayworks.tracking import experiment_name

        nested = f", nested in pipeline run {tracker.parent_run_id}" if tracker.parent_run_id else ""
        print(f"[{kind}] mlflow: {tracker.uri} (experiment {experiment_name(spec)!r}, run {tracker.run_id}{nested})",
              flush=True)
    return tracker


def results(tracker: NullTracker, metrics: dict[str, Any]) -> dict[str, Any]:
    """Logs the job's numbers (nested dicts flattened); returns the manifest's ``tracking`` section."""
    tracker.log_metrics(0, numeric_metrics(metrics))
    section = tracker.gap()
    if section.get("skipped_logs"):
        print(f"[rayworks] tracking gap: {section['skipped_logs']} logs not sent to {section['uri']} "
              f"({section['last_error']}); recorded in the manifest", flush=True)
    return section


def close(tracker: NullTracker, manifest_uri: str | None, ok: bool = True) -> None:
    """Uploads the manifest (when the job succeeded) and ends the run."""
    if ok and manifest_uri:
        tracker.log_artifact(manifest_uri)
    tracker.finish("FINISHED" if ok else "FAILED")
