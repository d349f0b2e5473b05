"""Input planning: paths/globs/URIs -> an ordered file list -> deterministic work units.

Everything here runs before any work starts, so a missing path or an empty glob
fails at once with a ConfigError naming the input. The unit layout depends only on
the file list, the file sizes and ``unit_mb``, never on the parallelism, which is
what makes the output identical however many workers run it.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from typing import TYPE_CHECKING

from rayworks import storage
from rayworks.errors import ConfigError

if TYPE_CHECKING:
    from rayworks.config.prep import InputSpec

_GLOB_CHARS = "*?["


def _has_glob(p: str) -> bool:
    return any(c in p for c in _GLOB_CHARS)


def _expand_local(path: str, where: str) -> list[tuple[str, int]]:
    if _has_glob(path):
        hits = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
        if not hits:
            raise ConfigError(f"{where}: the glob {path!r} matched no files; check the pattern and the folder")
    elif os.path.isdir(path):
        hits = [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs]
        if not hits:
            raise ConfigError(f"{where}: the folder {path!r} holds no files")
    elif os.path.isfile(path):
        hits = [path]
    else:
        raise ConfigError(f"{where}: {path!r} does not exist; fix the path (relative paths are relative to "
                          "the config file)")
    return [(os.path.abspath(p), os.path.getsize(p)) for p in sorted(hits)]


def _expand_remote(uri: str, where: str) -> list[tuple[str, int]]:
    from pyarrow import fs as pafs

    scheme = uri.split("://", 1)[0]
    try:
        if _has_glob(uri):
            prefix = uri[: min(uri.index(c) for c in _GLOB_CHARS if c in uri)].rsplit("/", 1)[0]
            fs, base = storage.filesystem(prefix)
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            pattern = uri.split("://", 1)[1]
            hits = [(f"{scheme}://{i.path}", i.size) for i in infos
                    if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, pattern)]
            if not hits:
                raise ConfigError(f"{where}: the glob {uri!r} matched no objects")
        else:
            fs, p = storage.filesystem(uri)
            info = fs.get_file_info(p)
            if info.type == pafs.FileType.File:
                hits = [(uri, info.size)]
            elif info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(p, recursive=True))
                hits = [(f"{scheme}://{i.path}", i.size) for i in infos if i.type == pafs.FileType.File]
                if not hits:
                    raise ConfigError(f"{where}: {uri!r} holds no objects")
            else:
                raise ConfigError(f"{where}: {uri!r} does not exist")
    except ConfigError:
        raise
    except Exception as exc:  # pyarrow raises OSError/ArrowInvalid for credentials, buckets, schemes
        raise ConfigError(f"{where}: cannot list {uri!r}: {str(exc).splitlines()[0][:300]} "
                          "(check the URI and the cloud credentials on this machine)") from None
    return sorted(hits)


def expand_inputs(inputs: list["InputSpec"]) -> list[dict]:
    """Every input file in a fixed order: inputs in config order, files sorted by path.

    Returns dicts with path, size_bytes, format, text_mode, text_field. A file matched
    by two inputs is read once (the first match decides its format).
    """
    files: list[dict] = []
    seen: set[str] = set()
    for i, spec in enumerate(inputs):
        where = f"inputs[{i}].path"
        hits = (_expand_remote if storage.is_uri(spec.path) and not spec.path.startswith("file://")
                else _expand_local)(spec.path.removeprefix("file://"), where)
        for path, size in hits:
            if path in seen:
                continue
            seen.add(path)
            files.append({"path": path, "size_bytes": int(size), "format": spec.format,
                          "text_mode": spec.text_mode, "text_field": spec.text_field})
    return files


def splittable(f: dict) -> bool:
    """Line-oriented files can be cut into byte ranges; whole-file documents and Parquet cannot."""
    return f["format"] == "jsonl" or (f["format"] == "text" and f["text_mode"] == "line")


def plan_units(files: list[dict], unit_bytes: int) -> list[dict]:
    """Groups small files and cuts big line-oriented ones into units of about unit_bytes.

    Each unit is ``{"unit": i, "parts": [{"file": idx, "start": s, "end": e}]}`` with
    ``end=None`` for a whole file. Units keep input order, so a document's global
    position is (unit, index within unit).
    """
    units: list[list[dict]] = []
    cur: list[dict] = []
    cur_bytes = 0

    def flush():
        nonlocal cur, cur_bytes
        if cur:
            units.append(cur)
        cur, cur_bytes = [], 0

    for idx, f in enumerate(files):
        size = f["size_bytes"]
        if splittable(f) and size > unit_bytes:
            flush()
            n = -(-size // unit_bytes)
            step = -(-size // n)
            for s in range(0, size, step):
                units.append([{"file": idx, "start": s, "end": min(s + step, size)}])
            continue
        if cur and cur_bytes + size > unit_bytes:
            flush()
        cur.append({"file": idx, "start": 0, "end": None})
        cur_bytes += size
        if cur_bytes >= unit_bytes:
            flush()
    flush()
    return [{"unit": i, "parts": parts} for i, parts in enumerate(units)]
