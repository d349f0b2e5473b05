"""The one storage layer: local paths, file://, s3:// and gs:// through pyarrow filesystems.

Contracts every job relies on:

- ``read_bytes`` / ``read_json`` raise ``FileNotFoundError`` for a missing file (never None).
- ``write_bytes`` is atomic: locally the bytes go to a temporary sibling that is fsynced and
  renamed over the final name, so a reader (or a crash, or a full disk) sees the old file or
  the new one, never part of one. On object stores a single PUT is already all-or-nothing.
- ``publish_dir`` replaces a whole folder only once its new version is complete, and only a
  folder rayworks made (``MARKER`` or a manifest in it): never a user's folder.
- Temporaries carry ``TMP_TAG`` in their name; ``cleanup_temporaries`` removes what a killed
  writer left behind, and ``list_files`` never returns them.
- Large files are copied in chunks (``copy_file``, ``copy_dir``), never held whole in memory;
  ``read_bytes``/``write_bytes`` are for manifests, markers and other small files.

Object stores (s3://, gs://) have no rename, and this layer does not pretend otherwise:

- A single file write is one PUT, so it is all-or-nothing, but the folder it lands in is not
  fsynced or versioned.
- Replacing a published folder (``publish_dir``) is NOT atomic there. Its manifest is deleted
  first, so while the new version uploads, and forever if the upload fails midway, readers
  see an incomplete artifact (no manifest) instead of a mix; the previous version is gone as
  soon as its first file is overwritten. Keep an artifact you cannot lose under its own
  output URI (a new job name per version) or turn on bucket versioning.
- ``cleanup_temporaries`` does nothing there (nothing is staged on an object store).

Nothing here supports two runs writing the same output at once: ``cleanup_temporaries``
removes every temporary it finds, including those of a writer that is still running.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

from rayworks.errors import ConfigError

TMP_TAG = ".rwtmp-"  # a file or folder being written
OLD_TAG = ".rwold-"  # a published folder's previous version, removed once the new one is in place
MARKER = ".rayworks"  # written first into every folder rayworks creates (rayworks.artifacts.mark)
# An artifact's manifest, and the name older exports used for it.
MANIFEST_NAMES = ("manifest.json", "rayworks_export.json")


def is_uri(path: str) -> bool:
    return "://" in path


def is_remote(path: str) -> bool:
    """True for object-store URIs (s3://, gs://): no rename, so no atomic folder swap."""
    return is_uri(path) and not path.startswith("file://")


def filesystem(path: str):
    """(pyarrow FileSystem, path inside it) for a local path or a URI."""
    from pyarrow import fs as pafs

    if not is_remote(path):
        local = path[len("file://"):] if path.startswith("file://") else path
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(local))
    return pafs.FileSystem.from_uri(path)


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts if p]])


def name_of(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1]


def parent_of(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[0]


def _type(path: str):
    fs, p = filesystem(path)
    return fs.get_file_info(p).type


def exists(path: str) -> bool:
    from pyarrow import fs as pafs

    return _type(path) != pafs.FileType.NotFound


def is_file(path: str) -> bool:
    from pyarrow import fs as pafs

    return _type(path) == pafs.FileType.File


def is_dir(path: str) -> bool:
    from pyarrow import fs as pafs

    return _type(path) == pafs.FileType.Directory


def makedirs(path: str) -> None:
    fs, p = filesystem(path)
    fs.create_dir(p, recursive=True)


def list_files(path: str, suffix: str = "", recursive: bool = False) -> list[str]:
    """Sorted file paths under a folder (relative names joined to ``path``); [] if it is absent.

    Temporaries of unfinished writes are never listed.
    """
    from pyarrow import fs as pafs

    fs, p = filesystem(path)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=recursive))
    rels = sorted(i.path[len(p.rstrip("/")) + 1:] for i in infos
                  if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
                  and TMP_TAG not in i.path[len(p):])
    return [join(path, r) for r in rels]


def read_bytes(path: str) -> bytes:
    """The file's bytes. Raises FileNotFoundError when it does not exist."""
    fs, p = filesystem(path)
    try:
        with fs.open_input_stream(p) as f:
            return f.read()
    except FileNotFoundError:
        raise
    except OSError:
        if not is_file(path):  # object stores report a missing key as a plain OSError
            raise FileNotFoundError(f"no such file: {path}") from None
        raise


def read_json(path: str):
    return json.loads(read_bytes(path))


def open_input(path: str):
    """A readable, seekable binary file (so Parquet works on every backend)."""
    fs, p = filesystem(path)
    return fs.open_input_file(p)


def write_bytes(path: str, data: bytes) -> None:
    """Writes a whole file so that readers see either the old file or all of the new one."""
    fs, p = filesystem(path)
    parent = p.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if is_remote(path):
        with fs.open_output_stream(p) as f:
            f.write(data)
        return
    tmp = f"{parent}/.{p.rsplit('/', 1)[1]}{TMP_TAG}{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(parent)


def _fsync_dir(local_dir: str) -> None:
    """Makes a rename in ``local_dir`` durable (a crash right after it cannot bring the old name back)."""
    try:
        fd = os.open(local_dir, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (and all of Windows) cannot fsync a folder; the rename still happened
    finally:
        os.close(fd)


def copy_file(src: str, dst: str, chunk: int = 8 << 20) -> None:
    """Copies one file in ``chunk``-byte pieces (any two of local / s3 / gs), so size is no memory limit.

    A local ``dst`` is written like ``write_bytes``: temporary sibling, fsync, rename.
    """
    sf, sp = filesystem(src)
    df, dp = filesystem(dst)
    parent = dp.rsplit("/", 1)[0]
    df.create_dir(parent, recursive=True)
    target = dp if is_remote(dst) else f"{parent}/.{dp.rsplit('/', 1)[1]}{TMP_TAG}{uuid.uuid4().hex[:8]}"
    try:
        with sf.open_input_stream(sp) as fin:
            if is_remote(dst):
                with df.open_output_stream(target) as fout:
                    _pump(fin, fout, chunk)
                return
            with open(target, "wb") as fout:
                _pump(fin, fout, chunk)
                fout.flush()
                os.fsync(fout.fileno())
        os.replace(target, dp)
    except BaseException:
        if not is_remote(dst):
            _remove_quietly(target)
        raise
    _fsync_dir(parent)


def _pump(fin, fout, chunk: int) -> None:
    while True:
        b = fin.read(chunk)
        if not b:
            return
        fout.write(b)


def _remove_quietly(local_path: str) -> None:
    try:
        os.unlink(local_path)
    except OSError:
        pass


def dumps_json(obj) -> bytes:
    """Deterministic, readable JSON bytes (sorted keys, trailing newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_json(path: str, obj) -> None:
    write_bytes(path, dumps_json(obj))


def delete_dir(path: str) -> None:
    if is_dir(path):
        fs, p = filesystem(path)
        fs.delete_dir(p)


def delete_file(path: str) -> None:
    if is_file(path):
        fs, p = filesystem(path)
        fs.delete_file(p)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str, chunk: int = 8 << 20) -> str:
    """The file's sha256, streamed. Raises FileNotFoundError when it does not exist."""
    if not is_file(path):
        raise FileNotFoundError(f"no such file: {path}")
    h = hashlib.sha256()
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def file_size(path: str) -> int:
    fs, p = filesystem(path)
    info = fs.get_file_info(p)
    if info.type.name != "File":
        raise FileNotFoundError(f"no such file: {path}")
    return int(info.size)


def table_to_parquet_bytes(table, row_group_rows: int = 4096, compression: str = "zstd") -> bytes:
    """Serialises a table to Parquet bytes with a fixed layout (same table -> same bytes)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group_rows, compression=compression, write_statistics=False)
    return sink.getvalue().to_pybytes()


def read_parquet(path: str, columns: list[str] | None = None, filters=None):
    import pyarrow.parquet as pq

    fs, p = filesystem(path)
    return pq.read_table(p, filesystem=fs, columns=columns, filters=filters)


def copy_dir(src: str, dst: str) -> None:
    """Copies a folder's files into ``dst`` (any two of local / s3 / gs); existing files are overwritten."""
    from pyarrow import fs as pafs

    sf, sp = filesystem(src)
    df, dp = filesystem(dst)
    df.create_dir(dp, recursive=True)
    pafs.copy_files(sp, dp, source_filesystem=sf, destination_filesystem=df)


def local_copy(path: str, dest: str, names: list[str] | None = None) -> str:
    """Copies a folder's files (all, or just ``names`` that exist) to a local folder; returns it."""
    os.makedirs(dest, exist_ok=True)
    for f in list_files(path):
        base = name_of(f)
        if names is None or base in names:
            copy_file(f, os.path.join(os.path.abspath(dest), base))
    return dest


def temp_sibling(path: str) -> str:
    """A fresh temporary sibling of ``path`` (same folder, so a rename into place is atomic)."""
    return join(parent_of(path), f".{name_of(path)}{TMP_TAG}{uuid.uuid4().hex[:8]}")


def is_claimed(folder: str) -> bool:
    """True when rayworks made ``folder``: it holds ``MARKER``, or a manifest (JSON with a ``kind``)."""
    if exists(join(folder, MARKER)):
        return True
    for name in MANIFEST_NAMES:
        try:
            m = json.loads(read_bytes(join(folder, name)))
        except (FileNotFoundError, ValueError):
            continue
        if isinstance(m, dict) and isinstance(m.get("kind"), str):
            return True
    return False


def _check_replaceable(dst: str) -> None:
    """Refuses to replace anything but a missing or empty folder, or one rayworks made."""
    from pyarrow import fs as pafs

    fs, p = filesystem(dst)
    kind = fs.get_file_info(p).type
    if kind == pafs.FileType.NotFound:
        return
    if kind != pafs.FileType.Directory:
        raise ConfigError(f"{dst} is a file, not an artifact folder; rayworks will not replace it")
    if fs.get_file_info(pafs.FileSelector(p)) and not is_claimed(dst):
        raise ConfigError(f"{dst} is a non-empty folder that rayworks did not create (no {MARKER} marker "
                              "or manifest); rayworks will not replace it. Give an empty or new folder")


def publish_dir(src: str, dst: str, last: str | None = "manifest.json") -> None:
    """Puts the complete folder ``src`` at ``dst``; the old ``dst`` goes only after the new one is in.

    ``dst`` must be missing, empty, or a folder rayworks made (``is_claimed``): this is the
    last guard against replacing a user's folder, behind each job's own output check.

    Local disks: ``src`` is copied into a temporary sibling of ``dst`` (or used as is when it
    already is one), then the old folder is renamed aside, the new one renamed into place and
    the old one deleted. Both renames are metadata-only, so there is no moment in which ``dst``
    holds part of either version; a crash between them leaves the old version under an
    ``OLD_TAG`` name, which ``cleanup_temporaries`` puts back.

    Object stores have no rename, so this is not atomic there (see the module docstring):
    the old manifest (``last``) is deleted first, so a reader never takes a half-replaced
    folder for complete, the files are streamed up one by one, files the new version lacks
    are deleted and ``last`` is written at the end. A failure midway leaves an incomplete
    folder (no manifest) and the old version lost.

    Raises:
        ConfigError: ``dst`` is a file, or a non-empty folder rayworks did not make.
    """
    _check_replaceable(dst)
    if is_remote(dst):
        if last:
            delete_file(join(dst, last))
        new = {f[len(src.rstrip("/")) + 1:] for f in list_files(src, recursive=True)}
        for rel in sorted(new - {last}):
            copy_file(join(src, rel), join(dst, rel))
        for f in list_files(dst, recursive=True):
            if f[len(dst.rstrip("/")) + 1:] not in new:
                delete_file(f)
        if last and last in new:
            copy_file(join(src, last), join(dst, last))
        return
    _, d = filesystem(dst)
    _, s = filesystem(src) if not is_remote(src) else (None, None)
    parent = os.path.dirname(d)
    os.makedirs(parent, exist_ok=True)
    if s is not None and os.path.dirname(s) == parent and os.path.basename(s).startswith(f".{os.path.basename(d)}."):
        staged = s  # already a sibling (a temporary or the output's build folder): move it, do not copy
    else:
        staged = temp_sibling(d)
        try:
            copy_dir(src, staged)
        except BaseException:
            delete_dir(staged)
            raise
    old = None
    if os.path.lexists(d):
        old = os.path.join(parent, f".{os.path.basename(d)}{OLD_TAG}{uuid.uuid4().hex[:8]}")
        os.replace(d, old)
    try:
        os.replace(staged, d)
    except BaseException:
        if old:
            os.replace(old, d)
        raise
    _fsync_dir(parent)
    if old:
        delete_dir(old)


def cleanup_temporaries(folder: str) -> list[str]:
    """Removes leftovers of interrupted writes in ``folder`` and below; returns what it removed.

    A previous version set aside by an interrupted ``publish_dir`` is put back when its
    folder is missing, and deleted otherwise. Every temporary counts as a leftover, also one
    a writer is still writing: call this only where no other run writes the same output
    (each job calls it once, at its start, on its own output).
    """
    if is_remote(folder):
        return []
    _, root = filesystem(folder)
    removed = []
    # Siblings first: an interrupted publish_dir of this folder leaves them beside it.
    parent, base = os.path.dirname(root), os.path.basename(root)
    if os.path.isdir(parent):
        for n in sorted(os.listdir(parent)):
            full = os.path.join(parent, n)
            if n.startswith(f".{base}{OLD_TAG}") and not os.path.lexists(root):
                os.replace(full, root)
            elif n.startswith((f".{base}{OLD_TAG}", f".{base}{TMP_TAG}")):
                _remove_tree(full)
                removed.append(full)
    if not os.path.isdir(root):
        return removed
    for dirpath, dirnames, filenames in os.walk(root):
        for n in list(dirnames) + filenames:
            full = os.path.join(dirpath, n)
            if OLD_TAG in n:
                final = os.path.join(dirpath, n.split(OLD_TAG)[0][1:])
                if not os.path.lexists(final):
                    os.replace(full, final)
                    continue
            elif TMP_TAG not in n:
                continue
            _remove_tree(full)
            removed.append(full)
        dirnames[:] = [n for n in dirnames if TMP_TAG not in n and OLD_TAG not in n]
    return removed


def _remove_tree(local_path: str) -> None:
    import shutil

    if os.path.isdir(local_path) and not os.path.islink(local_path):
        shutil.rmtree(local_path, ignore_errors=True)
    else:
        _remove_quietly(local_path)


def file_format(path: str, fmt: str) -> str:
    """A data file's format: ``fmt`` unless it is ``auto``, else by extension (jsonl, parquet, text)."""
    if fmt != "auto":
        return fmt
    low = path.lower()
    if low.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if low.endswith((".parquet", ".pq")):
        return "parquet"
    return "text"
