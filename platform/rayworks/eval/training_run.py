"""An eval job's scores, into the MLflow run of the training run that made the evaluated export.

A training run's MLflow record (rayworks.train.mlflow_run) holds its loss curves; the scores of
its export belong beside them. After an eval job has written ``results.json``, this module:

1. finds the training run: the train manifest in the export's parent folder (``{train
   output}/manifest.json``, whose ``tracking.run_id`` names the run) when that manifest lists
   this very export (same export manifest sha256), else the model registry's version of the
   export (its ``rayworks.training_run_id`` tag); an export nobody trained here (a Hugging Face
   folder of one's own) has no run and nothing is logged;
2. logs the scores as metrics under ``eval/`` at the export's training step (``eval/prep_val/loss``,
   ``eval/prep_val/perplexity``, ``eval/<task>/<metric>``, ``eval/gate_passed``), so a curve of
   ``eval/...`` over retrainings lines up with ``val_loss``;
3. uploads ``results.json`` as the run's artifact ``eval/<eval job name>/results.json``.

Every MLflow call goes through rayworks.tracking.runs.Tracker: a tracking server that is down
costs one warning and a count in the eval manifest's ``tracking`` section, never the job. A
rerun over the same export logs nothing twice (a metric already holding the value at the step is
left out).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from rayworks import artifacts, storage

PREFIX = "eval/"
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")  # what MLflow accepts in a metric key, less ':'


def _key(*parts: str) -> str:
    return PREFIX + "/".join(_UNSAFE.sub("_", p) for p in parts)


def metrics_of(results: dict) -> dict[str, float]:
    """The ``eval/`` metrics of an eval job's results (what is logged, and what tests compare with)."""
    out: dict[str, float] = {}
    for source, s in (results.get("perplexity") or {}).items():
        out[_key(source, "loss")] = float(s["loss"])
        if s.get("perplexity") is not None:
            out[_key(source, "perplexity")] = float(s["perplexity"])
    for task, r in ((results.get("harness") or {}).get("results") or {}).items():
        for k, v in r.items():
            metric, _, filt = k.partition(",")
            if "stderr" in metric or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            out[_key(task, metric if filt in ("", "none") else f"{metric}_{filt}")] = float(v)
    if "gate" in results:
        out[_key("gate_passed")] = 1.0 if results["gate"].get("passed") else 0.0
    return out


def export_facts(model: str) -> dict[str, Any] | None:
    """{sha256, step, train_manifest} of a rayworks training export, or None for any other model folder."""
    man = storage.join(model, artifacts.MANIFEST)
    if not storage.is_file(man):
        return None
    data = storage.read_bytes(man)
    m = json.loads(data)
    if m.get("kind") != "export":
        return None
    return {"sha256": storage.sha256_bytes(data), "step": m.get("step"),
            "train_manifest": storage.join(storage.parent_of(model.rstrip("/")), artifacts.MANIFEST)}


def run_from_train_manifest(path: str, export_sha256: str) -> tuple[bool, str | None]:
    """(the train manifest made this export, its MLflow run id or None) from a training output's manifest."""
    if not storage.is_file(path):
        return False, None
    m = storage.read_json(path)
    made = m.get("kind") == "train" and any(
        o.get("path") == f"export/{artifacts.MANIFEST}" and o.get("sha256") == export_sha256
        for o in m.get("outputs") or [])
    return made, ((m.get("tracking") or {}).get("run_id") if made else None)


def log_to_training_run(job, results: dict, results_uri: str) -> dict[str, Any]:
    """Logs ``results`` to the training run of ``job.model``; returns the eval manifest's ``tracking`` section.

    Never raises for tracking's sake: a server that is down is a warning and a count.
    """
    from rayworks.tracking import tracking_uri

    uri = tracking_uri(job.cluster_spec()) if job.tracking else None
    if uri is None:
        return {"enabled": False}
    facts = export_facts(job.model)
    if facts is None:
        return {"enabled": True, "uri": uri, "run_id": None,
                "reason": "the model is no rayworks training export (no export manifest): no training run to log to"}
    return _log(job, uri, facts, results, results_uri)


def _log(job, uri: str, facts: dict, results: dict, results_uri: str) -> dict[str, Any]:
    from rayworks.tracking.runs import Tracker

    t = job.cluster_spec().tracking
    made, run_id = run_from_train_manifest(facts["train_manifest"], facts["sha256"])
    found_by = "train manifest" if made else None
    error = None
    if not made:
        run_id, error = _registry_run(uri, job.model)
        found_by = "model registry" if run_id else None
    section = {"enabled": True, "uri": uri, "run_id": run_id, "found_by": found_by, "step": facts["step"]}
    if not run_id:
        if error:
            section.update(failed_calls=1, last_error=error)
        section["reason"] = ("the training run has no MLflow run (tracking was off or down while it trained)"
                             if made else "no training run found for this export (no train manifest beside it "
                                          "names it, and the model registry has no version of it)")
        return section
    tracker = Tracker(uri, run_id, who=f"eval {job.name!r}", timeout_s=t.request_timeout_s,
                      retry_after_s=t.retry_after_s)
    step = int(facts["step"] or 0)
    metrics = metrics_of(results)
    logged: list[str] = []

    def go():
        from mlflow.entities import Metric

        new = {}
        for k, v in sorted(metrics.items()):
            if not any(m.step == step and m.value == v for m in tracker.client.get_metric_history(run_id, k)):
                new[k] = v
        now = time.time_ns() // 1_000_000
        if new:
            tracker.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in new.items()],
                                     synchronous=True)
        logged.extend(new)

    if tracker.call(f"eval metrics at step {step}", go):
        print(f"[eval] mlflow: {len(logged)} eval/ metrics logged to training run {run_id} at step {step} "
              f"({len(metrics) - len(logged)} already there)", flush=True)
    artifact_dir = f"eval/{job.name}"
    uploaded = tracker.log_artifact(results_uri, artifact_dir)
    tracker.set_tags({f"rayworks.eval.{job.name}": storage.parent_of(results_uri)})
    gap = tracker.gap()
    section.update({"metrics_logged": sorted(logged), "metrics": len(metrics),
                    "artifact": f"{artifact_dir}/{storage.name_of(results_uri)}" if uploaded else None,
                    "skipped_logs": gap["skipped_logs"], "failed_calls": gap["failed_calls"],
                    "last_error": gap["last_error"]})
    if gap["skipped_logs"]:
        print(f"[eval] mlflow: {gap['skipped_logs']} logs to {uri} skipped ({gap['last_error']}); "
              "recorded in the manifest's tracking section", flush=True)
    return section


def _registry_run(uri: str, model: str) -> tuple[str | None, str | None]:
    """(training run id, error) of the registered version of the export ``model``; never raises."""
    from rayworks.tracking.registry import TAG_RUN, version_of_export
    from rayworks.tracking.runs import RETRY_ENV

    for k, v in RETRY_ENV.items():  # one short request to a server that is down, not minutes of retries
        os.environ.setdefault(k, v)
    try:
        mv = version_of_export(uri, model)
    except Exception as exc:  # noqa: BLE001 - a tracking server that is down never fails an eval job
        err = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        print(f"[eval] WARNING: tracking server {uri} failed (model registry lookup: {err}); the scores are "
              "not logged to the training run; the manifest's tracking section says so", flush=True)
        return None, err
    return ((mv["tags"].get(TAG_RUN) or mv.get("run_id")) if mv else None), None
