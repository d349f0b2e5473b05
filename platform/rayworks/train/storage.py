"""Small storage helpers over pyarrow.fs: local paths and s3:// / gs:// URIs alike."""

from __future__ import annotations

import hashlib
import json
import os
import shutil


def is_uri(path: str) -> bool:
    return "://" in path


def filesystem(path: str):
    """(pyarrow FileSystem, path inside it) for a local path or URI."""
    from pyarrow import fs

    if is_uri(path):
        return fs.FileSystem.from_uri(path)
    return fs.LocalFileSystem(), os.path.abspath(path)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])


def exists(path: str) -> bool:
    from pyarrow import fs

    f, p = filesystem(path)
    return f.get_file_info(p).type != fs.FileType.NotFound


def read_bytes(path: str) -> bytes:
    f, p = filesystem(path)
    with f.open_input_stream(p) as s:
        return s.read()


def read_json(path: str):
    return json.loads(read_bytes(path))


def write_bytes(path: str, data: bytes) -> None:
    """Writes atomically on local disks (tmp + rename); object stores are atomic per object."""
    if not is_uri(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        return
    f, p = filesystem(path)
    f.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with f.open_output_stream(p) as s:
        s.write(data)


def write_json(path: str, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def copy_dir(src: str, dst: str) -> None:
    """Copies a directory tree between any two of local / s3 / gs (dst replaced)."""
    if not is_uri(src) and not is_uri(dst):
        if os.path.exists(dst):
            shutil.rmtree(dst)
        shutil.copytree(src, dst)
        return
    from pyarrow import fs

    sf, sp = filesystem(src)
    df, dp = filesystem(dst)
    df.create_dir(dp, recursive=True)
    fs.copy_files(sp, dp, source_filesystem=sf, destination_filesystem=df)
