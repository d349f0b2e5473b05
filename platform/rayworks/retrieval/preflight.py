"""Preflights of the embed and index jobs: inputs exist before any engine or task starts.

Registered as ``KINDS["embed"].preflight`` and ``KINDS["index"].preflight``; the runners
call the same checks again on the cluster, which may see other files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rayworks import artifacts, storage
from rayworks.errors import ConfigError

if TYPE_CHECKING:
    from rayworks.config.cluster import ClusterSpec
    from rayworks.config.embed import EmbedJob
    from rayworks.config.index import IndexJob


def check_embed(job: "EmbedJob", spec: "ClusterSpec") -> None:
    check_embed_paths(job)


def check_index(job: "IndexJob", spec: "ClusterSpec") -> None:
    # The embeddings may come from an embed stage of the same pipeline that has not run yet.
    if storage.exists(job.embeddings):
        check_index_paths(job)


def check_embed_paths(job: "EmbedJob") -> None:
    """ConfigError when the model or the documents are missing."""
    if not storage.is_dir(job.model) or not storage.exists(storage.join(job.model, "config.json")):
        raise ConfigError(f"model: {job.model} is not a Hugging Face model folder (no config.json); give a training "
                          "export folder, local or s3:// / gs://")
    if not storage.exists(job.input.path):
        raise ConfigError(f"input.path: {job.input.path} does not exist; give a .jsonl, .parquet or .txt file "
                          "(or a folder of them), local or s3:// / gs://")


def check_index_paths(job: "IndexJob") -> dict:
    """The embed manifest of ``job.embeddings``; ConfigError when it is missing or not an embed artifact."""
    try:
        m = artifacts.read(job.embeddings)
    except artifacts.ManifestError as exc:
        raise ConfigError(f"embeddings: {exc}; run the embed job first") from None
    if m["kind"] != "embed":
        raise ConfigError(f"embeddings: {job.embeddings} holds a {m['kind']!r} artifact, not an embed job's output")
    if not m.get("num_chunks"):
        raise ConfigError(f"embeddings: {job.embeddings} holds no vectors; embed some documents first")
    return m
