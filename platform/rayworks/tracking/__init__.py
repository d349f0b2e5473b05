"""Experiment tracking and the model registry, on MLflow: the layer below every job area.

- :mod:`rayworks.tracking.server`: the MLflow server rayworks runs beside a local cluster
  (``rayworks tracking up|down|status``);
- :mod:`rayworks.tracking.runs`: a run that never stops the job it tracks (:class:`Tracker`),
  opened or continued by run id, with every log step-ordered and at most once;
- :mod:`rayworks.tracking.registry`: exports as registered model versions, ``models:/``
  sources, the ``serving`` alias.
- :mod:`rayworks.tracking.jobrun`: the run of a job that logs its results once (prep, generate);
- :mod:`rayworks.tracking.pipeline`: a pipeline run as a parent run whose stage jobs' own runs
  are its nested runs.

Imports config, storage, artifacts, errors and secrets only; mlflow is imported inside
functions, so the CLI and the configs work without it.
"""

from __future__ import annotations

import os

from rayworks.config.tracking import Tracking

URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable: set in a job's runtime env, it wins over the spec


def tracking_uri(spec) -> str | None:
    """The MLflow URI a cluster spec's jobs and CLI use, or None when tracking is off for it.

    ``MLFLOW_TRACKING_URI`` (http/https) in the process's environment overrides the spec's
    server: a job can log to another server without a spec of its own.
    """
    t: Tracking = spec.tracking
    if not t.enabled:
        return None
    env = os.environ.get(URI_ENV, "")
    if env.startswith(("http://", "https://")):
        return env.rstrip("/")
    return t.client_uri(spec.provider.type)


def experiment_name(spec) -> str:
    """The MLflow experiment of a spec's runs."""
    return spec.tracking.experiment or f"rayworks-{spec.name}"
