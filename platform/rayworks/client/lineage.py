"""Lineage: walk an artifact's manifests back to the input files, verifying every file on the way.

served model -> serve manifest -> export manifest -> checkpoint + prep manifest -> input
files. Every manifest has the same shape (:mod:`rayworks.artifacts`), so this is one
generic loop: each manifest is re-hashed against what its child recorded, each file it
lists as an output is re-hashed against the manifest, each input is followed. A changed,
missing or truncated file marks its node (and the command exits non-zero), by name.
"""

from __future__ import annotations

import json
from pathlib import Path

from rayworks import artifacts, storage
from rayworks.errors import ConfigError


def find_model(model_id: str, storage_uri: str) -> str:
    """The newest serve manifest under {storage}/serve that serves model_id."""
    from pyarrow import fs

    filesystem_, root = storage.filesystem(storage.join(storage_uri, "serve"))
    found = []
    try:
        infos = filesystem_.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError:
        infos = []
    for info in infos:
        if info.path.endswith("/" + artifacts.MANIFEST):
            uri = info.path if not storage.is_remote(storage_uri) else f"{storage_uri.split('://')[0]}://{info.path}"
            try:
                man = json.loads(storage.read_bytes(uri))
            except (ValueError, FileNotFoundError):
                continue
            ids = [m.get("id") for m in (man.get("config") or {}).get("models", [])]
            ids += [i.get("model") for i in man.get("inputs") or [] if isinstance(i, dict)]
            if model_id in ids:
                found.append((info.mtime_ns or 0, uri))
    if not found:
        raise ConfigError(f"no serve manifest under {storage_uri}/serve serves model {model_id!r}; give a path "
                          "(an artifact dir or a manifest.json) or the right --cluster")
    return max(found)[1]


def _facts(man: dict) -> str:
    keys = ("name", "run_name", "config_hash", "step", "steps", "train_loss", "val_loss", "app_name")
    parts = []
    for k in keys:
        if k in man and man[k] is not None:
            v = man[k]
            if k == "config_hash":
                v = str(v)[:12]
            elif isinstance(v, float):
                v = f"{v:.4f}"
            parts.append(f"{k}={v}")
    counts = man.get("counts") or {}
    for k in ("documents_read", "tokens", "sequences"):
        if k in counts:
            parts.append(f"{k}={counts[k]}")
    if man.get("outputs"):
        parts.append(f"outputs={len(man['outputs'])} files")
    parts += mlflow_facts(man.get("tracking") or {})
    return " ".join(parts)


def mlflow_facts(tracking: dict) -> list[str]:
    """The MLflow run (and registered version) that holds an artifact, the pipeline run it was a stage
    of, or the gap when its server was down: prep, train, generate and export links alike."""
    parts = []
    if tracking.get("run_id"):
        parts.append(f"mlflow_run={tracking['run_id']}")
        if tracking.get("skipped_logs"):  # the run exists, but some logs never reached it
            parts.append(f"mlflow_gap={tracking['skipped_logs']}")
    elif tracking.get("enabled"):  # tracking was on, but the server never took the run
        parts.append(f"mlflow_run=none(gap:{tracking.get('skipped_logs', 0)} logs)")
    if tracking.get("parent_run_id"):
        parts.append(f"mlflow_pipeline_run={tracking['parent_run_id']}")
    if tracking.get("model_version"):
        parts.append(f"model_version={tracking['model_version']['uri']}")
    return parts


def _train_tracking(export_manifest: str) -> str:
    """An export inside a training run's output: that run's MLflow run and the version it registered."""
    train = storage.join(storage.parent_of(storage.parent_of(export_manifest)), artifacts.MANIFEST)
    try:
        man = json.loads(storage.read_bytes(train)) if storage.is_file(train) else {}
    except ValueError:
        return ""
    if man.get("kind") != "train" or not man.get("tracking"):
        return ""
    return " " + _facts({"tracking": man["tracking"]})


def _file_node(node: dict, p: str, expected: str | None) -> None:
    try:
        sha = storage.sha256_file(p)
    except FileNotFoundError:
        node.update(kind="missing", status="MISSING", problems=[f"{p}: missing"])
        return
    node.update(kind="file", sha256=sha, size_bytes=storage.file_size(p))
    if expected and expected != sha:
        node.update(status=f"MISMATCH (recorded {expected[:12]})", problems=[f"{p}: sha256 differs from the "
                                                                              f"recorded {expected[:12]}"])
    else:
        node["status"] = "ok"


def chain(start: str, storage_uri: str | None = None) -> list[dict]:
    """Walks from a path or model id to the inputs; returns nodes with depth, status and problems."""
    is_path = "/" in start or Path(start).exists()
    path = artifacts.find_manifest(start) if is_path else None
    if path is None and is_path and start.endswith(".json") and storage.is_file(start):
        path = start  # a manifest under another name
    if path is None:
        if is_path and storage.exists(start):
            raise ConfigError(f"{start}: no manifest.json there; give an artifact folder or a manifest")
        if storage_uri is None:
            raise ConfigError(f"{start}: not a manifest, artifact dir or known model id")
        path = find_model(start, storage_uri)
    nodes: list[dict] = []
    seen: dict[str, str] = {}  # manifest path -> kind: each manifest's outputs are hashed once per walk

    def walk(p: str, expected: str | None, depth: int, role: str | None, files: list[dict] | None) -> None:
        node: dict = {"depth": depth, "path": p, "what": role, "status": "ok"}
        nodes.append(node)
        mpath = p if depth == 0 else artifacts.find_manifest(p)
        if mpath is None:
            if files is not None or storage.is_dir(p):
                problems = artifacts.verify_files(p, files or []) if storage.is_dir(p) else [f"{p}: missing"]
                node.update(kind=role or "dir", status="ok" if not problems else
                            ("MISSING" if not storage.is_dir(p) else f"CHANGED ({len(problems)} files)"))
                if problems:
                    node["problems"] = problems
                return
            _file_node(node, p, expected)
            return
        node["path"] = mpath
        data = storage.read_bytes(mpath)
        sha = storage.sha256_bytes(data)
        node["sha256"] = sha
        problems = []
        if expected and expected != sha:
            node["status"] = f"MISMATCH (recorded {expected[:12]})"
            problems.append(f"{mpath}: sha256 differs from the recorded {expected[:12]}")
        if mpath in seen:  # reached before (e.g. two inputs share a prep): its files were verified there
            node.update(kind=seen[mpath], facts="(verified above)")
            if problems:
                node["problems"] = problems
            return
        try:
            man = artifacts.parse(data, mpath)
        except artifacts.ManifestError as exc:
            node.update(kind="manifest", status="INVALID", problems=problems + [str(exc)])
            return
        node.update(kind=man["kind"], facts=_facts(man))
        if man["kind"] == "export" and not man.get("tracking"):
            node["facts"] += _train_tracking(mpath)
        seen[mpath] = man["kind"]
        bad = artifacts.verify_outputs(storage.parent_of(mpath), man)
        if bad:
            problems += bad
            if node["status"] == "ok":
                node["status"] = f"CHANGED ({len(bad)} files)"
        if problems:
            node["problems"] = problems
        for inp in man.get("inputs") or []:
            walk(inp["path"], inp.get("sha256"), depth + 1, inp.get("role"), inp.get("files"))

    walk(path, None, 0, None, None)
    return nodes


def format_chain(nodes: list[dict]) -> str:
    lines = []
    for n in nodes:
        pad = "  " * n["depth"] + ("<- " if n["depth"] else "")
        sha = (n.get("sha256") or "")[:12]
        extra = f"  {n['facts']}" if n.get("facts") else ""
        lines.append(f"{pad}{n['kind']:<7} {n['path']}  sha256:{sha} [{n['status']}]{extra}")
        for prob in n.get("problems") or []:
            lines.append(f"{'  ' * (n['depth'] + 2)}! {prob}")
    return "\n".join(lines)
