"""The prep job's client-side preflight: inputs and tokenizer exist before anything is submitted.

Registered as ``KINDS["prep"].preflight`` (config/jobs.py); run by ``rayworks validate``,
``submit`` and ``run`` after the resource check.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rayworks.data.inputs import expand_inputs
from rayworks.errors import ConfigError

if TYPE_CHECKING:
    from rayworks.config.cluster import ClusterSpec
    from rayworks.config.prep import PrepJob


def check(job: "PrepJob", spec: "ClusterSpec") -> None:
    """Missing local inputs, empty globs and a tokenizer folder without tokenizer.json fail here."""
    if spec.provider.type != "local":
        return  # paths are resolved on the cluster, which may see other files
    expand_inputs(job.inputs)
    if job.tokenizer.path and "://" not in job.tokenizer.path:
        if not (Path(job.tokenizer.path) / "tokenizer.json").is_file():
            raise ConfigError(f"tokenizer.path: {job.tokenizer.path} has no tokenizer.json; give a Hugging Face "
                              "tokenizer directory (save_pretrained output) or unset it to train one")
