"""Lineage: follow an artifact's manifests back to the input files, checking hashes.

served model -> serve manifest -> export (rayworks_export.json) -> checkpoint / training
run -> prep manifest -> input files. Every link names its parent by path and sha256;
each is re-hashed here, so a changed or replaced parent shows up as a mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path

from rayworks.errors import ConfigError
from rayworks.storage import filesystem, read_bytes, sha256_bytes

MANIFEST_NAMES = ("manifest.json", "rayworks_export.json")


def _manifest_path(p: str) -> str | None:
    if p.endswith(".json"):
        return p if read_bytes(p) is not None else None
    for name in MANIFEST_NAMES[::-1] if p.rstrip("/").endswith("export") else MANIFEST_NAMES:
        cand = f"{p.rstrip('/')}/{name}"
        if read_bytes(cand) is not None:
            return cand
    return None


def find_model(model_id: str, storage_uri: str) -> str:
    """The newest serve manifest under {storage}/serve that serves model_id."""
    from pyarrow import fs

    filesystem_, root = filesystem(f"{storage_uri.rstrip('/')}/serve")
    found = []
    try:
        infos = filesystem_.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError:
        infos = []
    for info in infos:
        if info.path.endswith("/manifest.json"):
            uri = info.path if "://" not in storage_uri else f"{storage_uri.split('://')[0]}://{info.path}"
            man = json.loads(read_bytes(uri) or b"{}")
            ids = [m.get("id") for m in (man.get("config") or {}).get("models", [])]
            ids += [i.get("model") for i in man.get("inputs") or [] if isinstance(i, dict)]
            if model_id in ids:
                found.append((info.mtime_ns or 0, uri))
    if not found:
        raise ConfigError(f"no serve manifest under {storage_uri}/serve serves model {model_id!r}; give a path "
                          "(an export dir or a manifest.json) or the right --cluster")
    return max(found)[1]


def _parents(man: dict, path: str) -> list[dict]:
    """The artifacts and files a manifest names as its inputs, as {path, sha256, what}."""
    out = []
    if man.get("kind") == "export":
        # export -> checkpoint it was consolidated from -> the training run's manifest -> prep
        if man.get("checkpoint"):
            out.append({"path": man["checkpoint"], "sha256": None, "what": "checkpoint", "dir": True})
        run_manifest = f"{path.rsplit('/', 2)[0]}/manifest.json"
        if read_bytes(run_manifest) is not None:
            out.append({"path": run_manifest, "sha256": None, "what": "training run"})
            return out
        prep = man.get("prep_manifest") or {}
        if prep.get("path"):
            out.append({"path": prep["path"], "sha256": prep.get("sha256"), "what": "prep"})
        return out
    inputs = man.get("inputs") or []
    if isinstance(inputs, dict):
        inputs = [{"what": k, **v} for k, v in inputs.items() if isinstance(v, dict)]
    for inp in inputs:
        if isinstance(inp, dict):
            p = inp.get("manifest") or inp.get("path") or inp.get("uri")
            if p:
                out.append({"path": p, "sha256": inp.get("sha256") or inp.get("manifest_sha256"),
                            "what": inp.get("what") or inp.get("kind") or inp.get("model")})
    return out


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
    return " ".join(parts)


def chain(start: str, storage_uri: str | None = None) -> list[dict]:
    """Walks from a path or model id to the inputs; returns nodes with depth and hash status."""
    path = _manifest_path(start) if ("/" in start or Path(start).exists()) else None
    if path is None:
        if storage_uri is None:
            raise ConfigError(f"{start}: not a manifest, artifact dir or known model id")
        path = find_model(start, storage_uri)
    nodes: list[dict] = []

    def walk(p: str, expected_sha: str | None, depth: int, what: str | None, is_dir: bool = False) -> None:
        node = {"depth": depth, "path": p, "what": what}
        if is_dir:
            from pyarrow import fs

            fs_, fpath = filesystem(p)
            ok = fs_.get_file_info(fpath).type == fs.FileType.Directory
            node.update(kind=what or "dir", status="ok" if ok else "MISSING")
            nodes.append(node)
            return
        data = read_bytes(p)
        if data is None:
            node.update(kind="missing", status="MISSING")
            nodes.append(node)
            return
        sha = sha256_bytes(data)
        node["sha256"] = sha
        node["status"] = "ok" if not expected_sha or expected_sha == sha else f"MISMATCH (recorded {expected_sha[:12]})"
        man = None
        if p.endswith(".json"):
            try:
                man = json.loads(data)
            except ValueError:
                man = None
        if not isinstance(man, dict) or "kind" not in man:
            node["kind"] = "file"
            node["size_bytes"] = len(data)
            nodes.append(node)
            return
        node["kind"] = man["kind"]
        node["facts"] = _facts(man)
        nodes.append(node)
        for parent in _parents(man, p):
            if parent.get("dir"):
                walk(parent["path"], None, depth + 1, parent["what"], is_dir=True)
                continue
            pp = _manifest_path(parent["path"]) or parent["path"]
            walk(pp, parent["sha256"], depth + 1, parent.get("what"))

    walk(path, None, 0, None)
    return nodes


def format_chain(nodes: list[dict]) -> str:
    lines = []
    for n in nodes:
        pad = "  " * n["depth"] + ("<- " if n["depth"] else "")
        sha = n.get("sha256", "")[:12]
        extra = f"  {n['facts']}" if n.get("facts") else ""
        lines.append(f"{pad}{n['kind']:<7} {n['path']}  sha256:{sha} [{n['status']}]{extra}")
    return "\n".join(lines)
