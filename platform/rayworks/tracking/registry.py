"""Exports as registered model versions; ``models:/`` sources; the ``serving`` alias.

A training run's export is registered as a version of the model named after the run
(``train.name``). The weights are not copied into MLflow: storage already holds them, hashed
by the export manifest. The version's ``source`` is ``runs:/<training run>/export`` (MLflow
accepts no bare folder as a source), where the run holds the export manifest as an artifact;
the folder itself is the tag ``rayworks.export_uri``, and the tags pin what it is:

    rayworks.export_manifest_sha256   sha256 of export/manifest.json
    rayworks.prep_manifest_sha256     sha256 of the prep manifest it was trained on
    rayworks.training_run_id          the MLflow run of the training run
    rayworks.export_uri               the export folder

``rayworks serve update`` takes ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` and serves
the version's source, after checking that the folder's manifest still has the registered
sha256. A deploy moves the alias ``serving`` to the version it serves.
"""

from __future__ import annotations

import re

from rayworks import storage
from rayworks.errors import ConfigError

SERVING_ALIAS = "serving"
TAG_EXPORT_SHA = "rayworks.export_manifest_sha256"
TAG_PREP_SHA = "rayworks.prep_manifest_sha256"
TAG_RUN = "rayworks.training_run_id"
TAG_EXPORT_URI = "rayworks.export_uri"
_MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")


def _client(uri: str):
    from rayworks.tracking.runs import _client as make

    return make(uri, 30)


def is_models_uri(source: str) -> bool:
    return source.startswith("models:/")


def register_export(uri: str, name: str, export_dir: str, run_id: str,
                    prep_sha256: str | None) -> dict:
    """Registers ``export_dir`` as a new version of model ``name``; returns {name, version, tags}.

    Raises whatever MLflow raises: the caller decides whether tracking may fail the job.
    """
    from mlflow.exceptions import MlflowException

    export_sha = storage.sha256_bytes(storage.read_bytes(storage.join(export_dir, "manifest.json")))
    client = _client(uri)
    same = client.search_model_versions(f"name = '{name}' and tags.`{TAG_EXPORT_SHA}` = '{export_sha}'")
    if same:  # the same bytes registered before (a rerun that re-exported nothing new)
        mv = max(same, key=lambda v: int(v.version))
        return _info(mv)
    try:
        client.create_registered_model(name, tags={"rayworks.kind": "train"})
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    tags = {TAG_EXPORT_SHA: export_sha, TAG_PREP_SHA: prep_sha256 or "", TAG_RUN: run_id,
            TAG_EXPORT_URI: export_dir}
    mv = client.create_model_version(name, source=f"runs:/{run_id}/export", run_id=run_id, tags=tags,
                                     description=f"rayworks export of training run {name!r}")
    return {"name": name, "version": int(mv.version), "tags": tags, "source": export_dir}


def resolve(uri: str | None, source: str) -> dict:
    """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` -> {name, version, source, tags}.

    Raises:
        ConfigError: not a models URI, no tracking server for the spec, no such version or
            alias, or the export folder no longer holds the registered manifest.
    """
    m = _MODELS_URI.match(source)
    if not m:
        raise ConfigError(f"{source!r}: give models:/NAME/VERSION or models:/NAME@ALIAS")
    if uri is None:
        raise ConfigError(f"{source!r} needs the model registry, but tracking is off for this cluster spec "
                          "(tracking.enabled, tracking.uri); give the export folder instead")
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        mv = (client.get_model_version(m["name"], m["version"]) if m["version"]
              else client.get_model_version_by_alias(m["name"], m["alias"]))
    except MlflowException as exc:
        raise ConfigError(f"{source!r}: the registry at {uri} has no such model version "
                          f"({str(exc).splitlines()[0][:160]})") from None
    except Exception as exc:  # noqa: BLE001 - connection errors: say where and what to do
        raise ConfigError(f"{source!r}: cannot reach the tracking server {uri} ({type(exc).__name__}); "
                          "start it (`rayworks tracking up`) or give the export folder") from None
    info = _info(mv)
    want = info["tags"].get(TAG_EXPORT_SHA)
    man = storage.join(info["source"], "manifest.json")
    if not want or not storage.is_file(man) or storage.sha256_bytes(storage.read_bytes(man)) != want:
        raise ConfigError(f"{source!r} (version {mv.version}) points at {info['source']}, whose manifest is missing or "
                          f"no longer has the registered sha256 {str(want)[:12]}...: the folder was replaced or changed")
    return info


def _info(mv) -> dict:
    """A version as {name, version, source (the export folder), tags, run_id}."""
    tags = dict(mv.tags or {})
    return {"name": mv.name, "version": int(mv.version), "source": tags.get(TAG_EXPORT_URI, mv.source),
            "tags": tags, "run_id": mv.run_id}


def version_of_export(uri: str, export_dir: str) -> dict | None:
    """The registered version whose export manifest sha256 is that of ``export_dir`` now, if any."""
    man = storage.join(export_dir, "manifest.json")
    if not storage.is_file(man):
        return None
    sha = storage.sha256_bytes(storage.read_bytes(man))
    found = _client(uri).search_model_versions(f"tags.`{TAG_EXPORT_SHA}` = '{sha}'")
    if not found:
        return None
    return _info(max(found, key=lambda v: int(v.version)))


def mark_serving(uri: str | None, export_dirs: list[str], alias: str = SERVING_ALIAS) -> list[dict]:
    """Moves ``alias`` to the registered version of each served export; never raises.

    Returns the versions it moved the alias to. A source that is no registered export (a
    Hugging Face folder of one's own) is left alone, and so is everything when tracking is off
    or the server is down (a warning says so: serving never waits on tracking).
    """
    if uri is None:
        return []
    moved = []
    for d in export_dirs:
        try:
            mv = version_of_export(uri, d)
            if mv:
                _client(uri).set_registered_model_alias(mv["name"], alias, str(mv["version"]))
                moved.append(mv)
                print(f"[rayworks] model registry: {mv['name']} version {mv['version']} is now @{alias}",
                      flush=True)
        except Exception as exc:  # noqa: BLE001 - tracking never fails a deploy
            print(f"[rayworks] WARNING: could not set alias @{alias} for {d} at {uri} "
                  f"({type(exc).__name__}: {str(exc)[:160]})", flush=True)
    return moved
