"""The serve job's client-side preflight: the key is in this shell, sources and key files exist.

Registered as ``KINDS["serve"].preflight`` (config/jobs.py). The config-only checks
(direct streaming needs HA proxy, the key's env var travels as a secret) stay on
``ServeJob.preflight``; the runner re-checks what the cluster sees in ``serve/job.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from rayworks.errors import ConfigError

if TYPE_CHECKING:
    from rayworks.config.cluster import ClusterSpec
    from rayworks.config.serve import ServedModel, ServeJob


def check(job: "ServeJob", spec: "ClusterSpec") -> None:
    """Raises ConfigError naming what is missing on this machine."""
    if job.auth.api_keys_env and not os.environ.get(job.auth.api_keys_env):
        raise ConfigError(f"auth.api_keys_env={job.auth.api_keys_env!r} is not set (or empty) in this shell; "
                          f"export {job.auth.api_keys_env}=<key> before submitting")
    if spec.provider.type == "local":
        for m in job.models:
            check_local_source(m)
        if job.retrieval:
            from rayworks.serve.retrieval import check_index

            check_index(job.retrieval.index)
        if job.auth.api_keys_file and not Path(job.auth.api_keys_file).is_file():
            raise ConfigError(f"auth.api_keys_file={job.auth.api_keys_file!r}: no such file; create one with "
                              f"`rayworks serve keygen --file {job.auth.api_keys_file}`")


def check_local_source(m: "ServedModel") -> None:
    """A local source must be a HF export dir (config.json + weights + tokenizer)."""
    if "://" in m.source:
        return
    p = Path(m.source)
    if not (p / "config.json").is_file():
        raise ConfigError(f"models[{m.id}].source={m.source!r} is not a model export (no config.json there); "
                          "point it at the training job's export dir")
    if not any(p.glob("*.safetensors")) and not any(p.glob("*.bin")):
        raise ConfigError(f"models[{m.id}].source={m.source!r} has no weights (*.safetensors)")
