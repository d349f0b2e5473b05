"""Local paths and s3:// / gs:// URIs through one small pyarrow.fs facade.

Commits are atomic on every backend: locally a file is written beside its final name
and renamed over it; on object stores a single PUT is already all-or-nothing.
"""

from __future__ import annotations

import os
import uuid


def _fs(uri: str):
    import pyarrow.fs as pafs

    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, p = _fs(uri)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, p = _fs(uri)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Sorted file URIs directly under a folder (empty if it does not exist)."""
    import pyarrow.fs as pafs

    fs, p = _fs(uri)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))
    return [join(uri, n) for n in names]


def makedirs(uri: str) -> None:
    fs, p = _fs(uri)
    fs.create_dir(p, recursive=True)


def read_bytes(uri: str) -> bytes:
    fs, p = _fs(uri)
    with fs.open_input_stream(p) as f:
        return f.read()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Writes a whole file so that readers see either nothing or all of it."""
    fs, p = _fs(uri)
    parent = p.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if is_remote(uri):
        with fs.open_output_stream(p) as f:
            f.write(data)
        return
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{p.rsplit('/', 1)[1]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def delete_dir(uri: str) -> None:
    if exists(uri):
        fs, p = _fs(uri)
        fs.delete_dir(p)


def open_input(uri: str):
    """A readable binary file (seekable, so Parquet works on every backend)."""
    fs, p = _fs(uri)
    return fs.open_input_file(p)


def local_copy(uri: str, dest: str, names: list[str] | None = None) -> str:
    """Copies a folder's files (all, or just `names` that exist) to a local folder; returns it."""
    os.makedirs(dest, exist_ok=True)
    files = list_files(uri)
    for f in files:
        base = f.rsplit("/", 1)[1]
        if names is None or base in names:
            with open(os.path.join(dest, base), "wb") as out:
                out.write(read_bytes(f))
    return dest
