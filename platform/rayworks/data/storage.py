"""Local paths and s3:// / gs:// URIs through one set of pyarrow.fs helpers.

Completion markers and shards must appear whole or not at all: locally a file is
written under a temporary name and renamed (atomic on POSIX); on object stores a
single PUT is already atomic (the object appears only when the upload completes).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid


def is_uri(path: str) -> bool:
    return "://" in path


def filesystem(path: str):
    """(pyarrow FileSystem, path inside it) for a local path or a URI."""
    from pyarrow import fs as pafs

    if not is_uri(path) or path.startswith("file://"):
        local = path[len("file://"):] if path.startswith("file://") else path
        return pafs.LocalFileSystem(), os.path.abspath(local)
    fs, inner = pafs.FileSystem.from_uri(path)
    return fs, inner


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def exists(path: str) -> bool:
    from pyarrow import fs as pafs

    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def read_bytes(path: str) -> bytes:
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def read_json(path: str):
    return json.loads(read_bytes(path))


def write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` so that readers see the whole file or nothing."""
    fs, p = filesystem(path)
    parent = p.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if type(fs).__name__ == "LocalFileSystem":
        tmp = f"{p}.tmp-{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    else:
        with fs.open_output_stream(p) as f:
            f.write(data)


def dumps_json(obj) -> bytes:
    """Deterministic, readable JSON bytes (sorted keys, trailing newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_json(path: str, obj) -> None:
    write_bytes(path, dumps_json(obj))


def delete_dir(path: str) -> None:
    from pyarrow import fs as pafs

    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.Directory:
        fs.delete_dir(p)


def delete_file(path: str) -> None:
    from pyarrow import fs as pafs

    fs, p = filesystem(path)
    if fs.get_file_info(p).type == pafs.FileType.File:
        fs.delete_file(p)


def sha256_file(path: str, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def table_to_parquet_bytes(table, row_group_rows: int = 4096, compression: str = "zstd") -> bytes:
    """Serialises a table to Parquet bytes with a fixed layout (same table -> same bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_rows, compression=compression,
                   write_statistics=False)
    return sink.getvalue().to_pybytes()


def read_parquet(path: str, columns: list[str] | None = None, filters=None):
    import pyarrow.parquet as pq

    fs, p = filesystem(path)
    return pq.read_table(p, filesystem=fs, columns=columns, filters=filters)
