"""MLflow runs that never stop the job they track.

A :class:`Tracker` wraps MLflow's client for one run. Every call goes through one door
(:meth:`Tracker._call`): a failure (server down, timeout, refused login) is warned about
once in the job log, counted, and turns the tracker "down" for ``retry_after_s``, during
which logs are skipped and counted without touching the network; then the server is tried
again. The counts and the steps they cover are the *gap*, which the job records in its
manifest (a training run keeps it in a small file under its output, :data:`GAP_FILE`, so
that a restarted worker group, or the driver after training, adds to it instead of starting
over).

Metrics are logged with an explicit ``step`` and only for steps after the last step the run
already holds (asked of the server once, before the first log): a worker group restarted
from an earlier checkpoint, or a resubmitted job, replays some steps, and MLflow would
otherwise hold those steps twice, out of order. The run id itself travels in checkpoints
and manifests, so a resumed job continues the same run (rayworks.train).
"""

from __future__ import annotations

import os
import time
from typing import Any

from rayworks import storage

GAP_FILE = "tracking_gap.json"   # under a training run's output: what could not be logged
# Set by `rayworks run` in a stage job's runtime env: the job's own run is then that pipeline
# run's nested stage run (rayworks.tracking.pipeline), not a separate top-level run.
PARENT_ENV, STAGE_ENV = "RAYWORKS_MLFLOW_PARENT_RUN_ID", "RAYWORKS_PIPELINE_STAGE"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag: the UI nests runs by it
RETRY_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def flatten(d: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts -> ``{"a.b.c": "value"}`` as MLflow params (lists as JSON text)."""
    import json

    if isinstance(d, dict) and d:
        out: dict[str, str] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    text = json.dumps(d, sort_keys=True) if isinstance(d, (list, dict)) else str(d)
    return {prefix: text[:MAX_PARAM_CHARS]}


def _client(uri: str, timeout_s: float):
    # MLflow's defaults retry a refused connection 7 times with doubling back-off (minutes):
    # a job must lose at most one short request to a server that is down. The user's own
    # settings win.
    for k, v in {**RETRY_ENV, "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(max(1, timeout_s)))}.items():
        os.environ.setdefault(k, v)
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _err(exc: BaseException) -> str:
    first = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {first}"


class NullTracker:
    """Tracking off (``tracking: false``, or no server for this spec): the same calls, no effects."""

    run_id: str | None = None
    uri: str | None = None
    parent_run_id: str | None = None

    def log_params(self, params: dict[str, Any]) -> bool:
        return False

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> bool:
        return False

    def set_tags(self, tags: dict[str, Any]) -> bool:
        return False

    def log_artifact(self, path: str, artifact_path: str | None = None) -> bool:
        return False

    def log_text(self, text: str, name: str) -> bool:
        return False

    def call(self, what: str, fn) -> bool:
        return False

    def finish(self, status: str = "FINISHED") -> bool:
        return False

    def reload_gap(self) -> None:
        """Nothing to reload."""

    def gap(self) -> dict[str, Any]:
        return {"enabled": False}


class Tracker(NullTracker):
    """One MLflow run; every method returns True when the server took the call.

    Args:
        uri: MLflow tracking URI.
        run_id: the run to log to; None when it could not be created (the server was down
            when the job started): every log is then counted as skipped.
        who: names the job in the one warning (``train rank 0``, ``pipeline``).
        gap_uri: where the gap is kept across processes (read at start, rewritten on change).
    """

    def __init__(self, uri: str, run_id: str | None, who: str = "job", timeout_s: float = 10,
                 retry_after_s: float = 30, gap_uri: str | None = None):
        self.uri, self.run_id, self.who = uri, run_id, who
        self.timeout_s, self.retry_after_s, self.gap_uri = timeout_s, retry_after_s, gap_uri
        self.client = _client(uri, timeout_s)
        self.down_until = 0.0
        self.warned = False
        self.last_step: int | None = None  # the newest step the run holds; asked once
        self.skipped, self.failed = 0, 0
        self.gap_steps: list[int] = []
        self.last_error: str | None = None
        self.reload_gap()

    # ------------------------------------------------------------------ the one door
    def call(self, what: str, fn) -> bool:
        """Runs ``fn()`` (MLflow calls) unless the server is down; a failure is warned, counted, never raised."""
        return self._call(what, fn)

    def _call(self, what: str, fn, step: int | None = None) -> bool:
        if self.run_id is None or time.time() < self.down_until:
            self._skip(step)
            return False
        try:
            fn()
            return True
        except Exception as exc:  # noqa: BLE001 - any failure of the tracking server is a gap, never fatal
            self.failed += 1
            self.down_until = time.time() + self.retry_after_s
            self.last_error = _err(exc)
            if not self.warned:
                self.warned = True
                print(f"[rayworks] WARNING: tracking server {self.uri} failed ({what}: {self.last_error}); "
                      f"{self.who} goes on without it, skipping logs (retrying every {self.retry_after_s:g}s); "
                      "the gap is counted in the manifest", flush=True)
            self._skip(step)
            return False

    def _skip(self, step: int | None) -> None:
        self.skipped += 1
        if step is not None:
            self.gap_steps = [step, step] if not self.gap_steps else [min(self.gap_steps[0], step),
                                                                     max(self.gap_steps[1], step)]
        self._save()

    def _save(self) -> None:
        if not self.gap_uri:
            return
        try:
            storage.write_json(self.gap_uri, self.gap())
        except OSError:
            pass  # the gap file is a report; losing it must not stop training either

    def reload_gap(self) -> None:
        """Takes the counts other processes (rank 0, an earlier worker group) left in the gap file."""
        if self.gap_uri and storage.exists(self.gap_uri):
            prev = storage.read_json(self.gap_uri)
            self.skipped, self.failed = int(prev.get("skipped_logs", 0)), int(prev.get("failed_calls", 0))
            self.gap_steps = list(prev.get("gap_steps") or [])
            self.last_error = prev.get("last_error") or self.last_error

    def gap(self) -> dict[str, Any]:
        """What a manifest records: the run, and what could not be logged."""
        section = {"enabled": True, "uri": self.uri, "run_id": self.run_id, "skipped_logs": self.skipped,
                   "failed_calls": self.failed, "gap_steps": self.gap_steps, "last_error": self.last_error}
        if self.parent_run_id:  # a pipeline's stage: this run is nested under the pipeline's run
            section["parent_run_id"] = self.parent_run_id
        return section

    # ------------------------------------------------------------------ logging
    def _fetch_last_step(self, keys) -> None:
        last = -1
        for key in keys:
            last = max([last] + [m.step for m in self.client.get_metric_history(self.run_id, key)])
        self.last_step = last

    def log_metrics(self, step: int, metrics: dict[str, Any]) -> bool:
        """Logs the non-None values at ``step``; a step the run already holds (a replay) is left out."""
        from mlflow.entities import Metric

        vals = {k: float(v) for k, v in metrics.items() if v is not None and k != "step"}
        if not vals:
            return True

        def go():
            if self.last_step is None:
                self._fetch_last_step(sorted(set(vals) | {"train_loss", "val_loss"}))
            if step <= self.last_step:
                return
            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in sorted(vals.items())],
                                  synchronous=True)
            self.last_step = step

        return self._call(f"metrics at step {step}", go, step)

    def log_params(self, params: dict[str, Any]) -> bool:
        """Params in batches of 100 (MLflow's limit per request); params the run has are left as they are."""
        from mlflow.entities import Param

        items = sorted(flatten(params).items())

        def go():
            have = self.client.get_run(self.run_id).data.params
            new = [Param(k, v) for k, v in items if k not in have]
            for i in range(0, len(new), 100):
                self.client.log_batch(self.run_id, params=new[i:i + 100], synchronous=True)

        return self._call("params", go)

    def set_tags(self, tags: dict[str, Any]) -> bool:
        from mlflow.entities import RunTag

        def go():
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None],
                                  synchronous=True)

        return self._call("tags", go)

    def log_artifact(self, path: str, artifact_path: str | None = None) -> bool:
        """Uploads a file (local path or storage URI) into the run's artifacts."""
        import tempfile

        def go():
            if storage.is_uri(path):
                with tempfile.TemporaryDirectory(prefix="rw-mlflow-") as d:
                    local = os.path.join(d, storage.name_of(path))
                    with open(local, "wb") as fh:
                        fh.write(storage.read_bytes(path))
                    self.client.log_artifact(self.run_id, local, artifact_path)
            else:
                self.client.log_artifact(self.run_id, path, artifact_path)

        return self._call(f"artifact {storage.name_of(path)}", go)

    def log_text(self, text: str, name: str) -> bool:
        return self._call(f"artifact {name}", lambda: self.client.log_text(self.run_id, text, name))

    def finish(self, status: str = "FINISHED") -> bool:
        return self._call("end of run", lambda: self.client.set_terminated(self.run_id, status))


def open_run(uri: str, experiment: str, run_name: str, run_id: str | None = None, tags: dict | None = None,
             timeout_s: float = 10) -> tuple[str | None, str | None]:
    """(run id, error): continues ``run_id`` if the server has it, else creates a run. Never raises.

    A run of a resumed job is set RUNNING again (MLflow keeps one status per run).
    """
    try:
        client = _client(uri, timeout_s)
        if run_id:
            try:
                client.get_run(run_id)
                client.update_run(run_id, status="RUNNING")
                for k, v in (tags or {}).items():  # e.g. a resumed stage moves under the pipeline run resuming it
                    client.set_tag(run_id, k, str(v))
                return run_id, None
            except Exception as exc:  # noqa: BLE001 - the run is gone (another server, deleted): a new one
                if "RESOURCE_DOES_NOT_EXIST" not in str(exc) and "not found" not in str(exc).lower():
                    raise
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        run = client.create_run(exp_id, run_name=run_name, tags={k: str(v) for k, v in (tags or {}).items()})
        return run.info.run_id, None
    except Exception as exc:  # noqa: BLE001 - a tracking server that is down never stops a job
        return None, _err(exc)


def pipeline_tags() -> dict[str, str]:
    """The nesting tags of a job that `rayworks run` submitted as a stage (from its env), else {}."""
    parent = os.environ.get(PARENT_ENV, "").strip()
    if not parent:
        return {}
    return {PARENT_TAG: parent, "rayworks.stage": os.environ.get(STAGE_ENV, "").strip()}


def for_job(spec, run_name: str, enabled: bool = True, run_id: str | None = None, tags: dict | None = None,
            who: str = "job", gap_uri: str | None = None) -> NullTracker:
    """The tracker of one job on ``spec``: a :class:`Tracker` on its run, or a :class:`NullTracker`."""
    from rayworks.tracking import experiment_name, tracking_uri

    uri = tracking_uri(spec)
    if not enabled or uri is None:
        return NullTracker()
    t = spec.tracking
    nest = pipeline_tags()
    rid, err = open_run(uri, experiment_name(spec), run_name, run_id, {**(tags or {}), **nest}, t.request_timeout_s)
    tracker = Tracker(uri, rid, who=who, timeout_s=t.request_timeout_s, retry_after_s=t.retry_after_s,
                      gap_uri=gap_uri)
    tracker.parent_run_id = nest.get(PARENT_TAG)
    if rid is None:
        tracker.failed += 1
        tracker.last_error = err
        tracker.warned = True
        tracker._save()
        print(f"[rayworks] WARNING: tracking server {uri} unreachable ({err}); {who} runs without an MLflow "
              "run; what it could not log is counted in the manifest", flush=True)
    return tracker
