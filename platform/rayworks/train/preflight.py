"""The train job's client-side preflight: the prep output it reads fits the model.

Registered as ``KINDS["train"].preflight`` (config/jobs.py). Reads only the prep
manifest (no torch, no Ray): vocabulary, splits and sequence length must fit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayworks.train.inputs import check_job_inputs

if TYPE_CHECKING:
    from rayworks.config.cluster import ClusterSpec
    from rayworks.config.train import TrainJob


def check(job: "TrainJob", spec: "ClusterSpec") -> None:
    """Raises ConfigError when the prep output is missing or does not fit the model, or when the
    run's output holds checkpoints of other work (rayworks.train.resume)."""
    from rayworks.train.resume import check_before_submit

    prep = check_job_inputs(job)
    check_before_submit(job, prep.manifest_sha256, job.artifact_uri(spec))
