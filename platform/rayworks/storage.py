"""Small helpers over pyarrow filesystems: local paths, s3:// and gs:// alike."""

from __future__ import annotations

import hashlib


def filesystem(uri: str):
    """(pyarrow filesystem, path) for a local path or a URI."""
    from pyarrow import fs

    if "://" in uri:
        return fs.FileSystem.from_uri(uri)
    return fs.LocalFileSystem(), uri


def read_bytes(uri: str) -> bytes | None:
    """The file's bytes, or None if it does not exist."""
    from pyarrow import fs

    filesystem_, path = filesystem(uri)
    if filesystem_.get_file_info(path).type != fs.FileType.File:
        return None
    with filesystem_.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Writes a file, creating parent folders (atomic rename on local disks)."""
    import os

    filesystem_, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    filesystem_.create_dir(parent, recursive=True)
    if "://" not in uri:
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    with filesystem_.open_output_stream(path) as f:
        f.write(data)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
