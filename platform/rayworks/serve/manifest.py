"""The serve job's manifest: what is deployed, from which exports, under which config.

An artifact like every other (:mod:`rayworks.artifacts`): the folder
``{storage}/serve/{name}/`` (local path, s3:// or gs://) gets the ``.rayworks`` marker and,
after each successful deploy, ``manifest.json`` with the common core (kind ``serve``, no
output files: the artifact is the running app). `rayworks serve update` reads it back to
redeploy with a new source. Inputs (role ``model``) name each model's export manifest and
its sha256, which is how lineage follows a served model back.
"""

from __future__ import annotations

import time
from typing import Any

from rayworks import artifacts, storage
from rayworks.config.base import config_hash
from rayworks.config.jobs import default_artifact_uri
from rayworks.config.serve import ServeJob
from rayworks.errors import ConfigError


def manifest_uri(storage_uri: str, name: str) -> str:
    """The manifest of serve job ``name`` (the output convention, without the job's config at hand)."""
    return storage.join(default_artifact_uri(storage_uri, "serve", name), artifacts.MANIFEST)


def inputs(job: ServeJob) -> list[dict[str, Any]]:
    """Each model's export as an input (role ``model``): its manifest's path and sha256 when it has one."""
    out = []
    for m in job.models:
        try:
            p = artifacts.find_manifest(m.source)
            sha = storage.sha256_file(p) if p else None
        except OSError:  # an unreachable bucket must not fail a healthy deploy: recorded without a hash
            p, sha = None, None
        out.append({"role": "model", "path": p or m.source, "sha256": sha, "model": m.id, "source": m.source})
    if job.retrieval:  # lineage: the served index (and through it the embeddings and their model)
        p = storage.join(job.retrieval.index, artifacts.MANIFEST)
        try:
            sha = storage.sha256_file(p)
        except OSError:
            sha = None
        out.append({"role": "index", "path": p, "sha256": sha})
    return out


def build(job: ServeJob, serve_config: dict, url: str, deployments: dict, deploy_s: float) -> dict[str, Any]:
    """The manifest dict of a successful deploy."""
    cfg = job.model_dump(mode="json")
    return artifacts.build(
        "serve", job.name, config_hash(cfg), inputs(job), [], artifacts.versions("serve"),
        app_name=job.serve_app_name, config=cfg, serve_config=serve_config, endpoint=url, deployments=deployments,
        deploy_s=round(deploy_s, 1), created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def write(job: ServeJob, manifest: dict) -> str:
    """Writes the manifest (atomically: a failed write leaves the previous deploy's) and returns its path.

    Raises:
        ConfigError: the folder holds a user's files or another kind of artifact.
    """
    artifacts.Manifest.model_validate(manifest)
    root = job.cluster_spec().storage.uri
    folder = job.artifact_uri()
    artifacts.check_output_dir(folder, root, "serve manifest folder", kind="serve")
    artifacts.mark(folder, "serve")
    uri = manifest_uri(root, job.name)
    storage.write_json(uri, manifest)
    return uri


def read(storage_uri: str, name: str) -> dict:
    """The last manifest of serve job ``name``; ConfigError if there is none or it is not a serve manifest."""
    uri = manifest_uri(storage_uri, name)
    if not storage.is_file(uri):
        raise ConfigError(f"no serve manifest at {uri}: deploy the serve job {name!r} first "
                          "(`rayworks submit jobs/configs/serve.yaml`)")
    try:
        m = artifacts.parse(storage.read_bytes(uri), uri)
    except artifacts.ManifestError as exc:
        raise ConfigError(f"{exc}; deploy the serve job {name!r} again") from None
    if m["kind"] != "serve":
        raise ConfigError(f"{uri} is a {m['kind']!r} manifest, not a serve manifest")
    return m


def list_names(storage_uri: str) -> list[str]:
    """Names of the serve jobs that have a manifest under storage."""
    from pyarrow import fs

    filesystem_, path = storage.filesystem(storage.join(storage_uri, "serve"))
    try:
        infos = filesystem_.get_file_info(fs.FileSelector(path, allow_not_found=True))
    except OSError:
        return []
    return sorted(i.base_name for i in infos if i.type == fs.FileType.Directory
                  and storage.is_file(manifest_uri(storage_uri, i.base_name)))
