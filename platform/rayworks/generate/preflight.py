"""The generate job's preflight: the model and the prompts exist before any engine starts.

Registered as ``KINDS["generate"].preflight`` (config/jobs.py); the runner calls
:func:`check_paths` again on the cluster, which may see other files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayworks.errors import ConfigError
from rayworks.storage import exists, is_dir, join

if TYPE_CHECKING:
    from rayworks.config.cluster import ClusterSpec
    from rayworks.config.generate import GenerateJob


def check(job: "GenerateJob", spec: "ClusterSpec") -> None:
    check_paths(job)


def check_paths(job: "GenerateJob") -> None:
    """Fails fast (ConfigError) when the model or the input is missing, before any engine starts."""
    if not exists(job.model) or not is_dir(job.model):
        raise ConfigError(f"model: {job.model} is not a folder; give a Hugging Face model folder (a training "
                          "export) as a local path, s3:// or gs:// URI")
    if not exists(join(job.model, "config.json")):
        raise ConfigError(f"model: {job.model} has no config.json; point it at a Hugging Face model folder "
                          "(the training job's export folder)")
    if not exists(job.input.path):
        raise ConfigError(f"input.path: {job.input.path} does not exist; give a .jsonl, .parquet or .txt file "
                          "(or a folder of them), local or s3:// / gs://")
