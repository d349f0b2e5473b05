"""The one storage layer (rayworks.storage) on local disk: contracts every job relies on."""

from __future__ import annotations

import os
import stat

import pytest

from rayworks import storage
from rayworks.errors import ConfigError


def test_missing_file_raises_file_not_found_everywhere(tmp_path):
    missing = str(tmp_path / "nope.json")
    for fn in (storage.read_bytes, storage.read_json, storage.sha256_file, storage.file_size):
        with pytest.raises(FileNotFoundError):
            fn(missing)
    assert not storage.exists(missing) and not storage.is_file(missing) and not storage.is_dir(missing)


def test_write_is_atomic_creates_parents_and_leaves_no_temporary(tmp_path):
    p = str(tmp_path / "a" / "b" / "f.bin")
    storage.write_bytes(p, b"old")
    storage.write_bytes(p, b"new bytes")
    assert storage.read_bytes(p) == b"new bytes"
    assert os.listdir(tmp_path / "a" / "b") == ["f.bin"]
    assert storage.sha256_file(p) == storage.sha256_bytes(b"new bytes")
    assert storage.file_size(p) == 9


def test_failed_write_keeps_old_bytes_and_removes_its_temporary(tmp_path):
    p = str(tmp_path / "f.json")
    storage.write_json(p, {"v": 1})

    with pytest.raises(TypeError):
        storage.write_bytes(p, object())  # fails inside the write, after the temporary exists
    assert storage.read_json(p) == {"v": 1}
    assert os.listdir(tmp_path) == ["f.json"]


def test_join_and_uri_helpers():
    assert storage.join("s3://b/x/", "/y/", "z") == "s3://b/x/y/z"
    assert storage.join("/a", "b") == "/a/b"
    assert storage.is_remote("gs://b/x") and not storage.is_remote("file:///tmp/x") and storage.is_uri("file:///x")
    assert storage.name_of("/a/b/") == "b" and storage.parent_of("/a/b") == "/a"


def test_file_uri_and_home_expand_to_local_paths(tmp_path):
    storage.write_bytes(f"file://{tmp_path}/x.txt", b"hi")
    assert (tmp_path / "x.txt").read_bytes() == b"hi"
    fs, p = storage.filesystem("~/x")
    assert p == os.path.expanduser("~/x")


def test_list_files_skips_temporaries_and_recurses(tmp_path):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "a.parquet").write_bytes(b"1")
    (tmp_path / "d" / "e" / "b.parquet").write_bytes(b"2")
    (tmp_path / "d" / f".c.parquet{storage.TMP_TAG}1234").write_bytes(b"3")
    d = str(tmp_path / "d")
    assert storage.list_files(d, ".parquet") == [f"{d}/a.parquet"]
    assert storage.list_files(d, recursive=True) == [f"{d}/a.parquet", f"{d}/e/b.parquet"]
    assert storage.list_files(str(tmp_path / "absent")) == []


def _tree(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_publish_dir_replaces_a_folder_whole(tmp_path):
    dst = tmp_path / "out"
    dst.mkdir()
    (dst / "old.txt").write_text("old")
    (dst / storage.MARKER).write_text('{"kind": "export"}')
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(b"w")
    (src / "manifest.json").write_text("{}")
    storage.publish_dir(str(src), str(dst))
    assert _tree(dst) == {"sub/w.bin": b"w", "manifest.json": b"{}"}
    assert sorted(os.listdir(tmp_path)) == ["out", "src"]  # src copied (not a sibling build), no leftovers


@pytest.mark.parametrize("claim", [None, "marker", "manifest", "bad-manifest"])
def test_publish_dir_replaces_only_a_folder_rayworks_made(tmp_path, claim):
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "notes.txt").write_text("the user's own file")
    if claim == "marker":
        (dst / storage.MARKER).write_text('{"kind": "export"}')
    elif claim == "manifest":
        (dst / "manifest.json").write_text('{"kind": "export"}')
    elif claim == "bad-manifest":
        (dst / "manifest.json").write_text('{"not": "a rayworks manifest"}')
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.bin").write_bytes(b"new")
    if claim in ("marker", "manifest"):
        storage.publish_dir(str(src), str(dst))
        assert _tree(dst) == {"model.bin": b"new"}
        return
    with pytest.raises(ConfigError, match="non-empty folder that rayworks did not create"):
        storage.publish_dir(str(src), str(dst))
    assert (dst / "notes.txt").read_text() == "the user's own file"
    assert sorted(os.listdir(tmp_path)) == ["mine", "src"]


def test_publish_dir_never_replaces_a_file_and_fills_an_empty_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a")
    f = tmp_path / "file.txt"
    f.write_text("keep")
    with pytest.raises(ConfigError, match="is a file"):
        storage.publish_dir(str(src), str(f))
    assert f.read_text() == "keep"
    (tmp_path / "empty").mkdir()
    storage.publish_dir(str(src), str(tmp_path / "empty"))
    assert _tree(tmp_path / "empty") == {"a": b"a"}


def test_copy_file_streams_in_chunks_and_leaves_no_temporary(tmp_path):
    data = os.urandom(300_000)
    (tmp_path / "big.bin").write_bytes(data)
    (tmp_path / "dst").mkdir()
    (tmp_path / "dst" / "big.bin").write_bytes(b"old")
    storage.copy_file(str(tmp_path / "big.bin"), str(tmp_path / "dst" / "big.bin"), chunk=4096)
    assert (tmp_path / "dst" / "big.bin").read_bytes() == data
    assert os.listdir(tmp_path / "dst") == ["big.bin"]
    storage.local_copy(str(tmp_path / "dst"), str(tmp_path / "copy"))
    assert (tmp_path / "copy" / "big.bin").read_bytes() == data


def test_publish_dir_moves_a_sibling_build_folder(tmp_path):
    dst = tmp_path / "out"
    build = tmp_path / ".out.rwbuild"
    build.mkdir()
    (build / "a").write_text("new")
    storage.publish_dir(str(build), str(dst))
    assert _tree(dst) == {"a": b"new"} and sorted(os.listdir(tmp_path)) == ["out"]


def test_cleanup_restores_a_set_aside_version_and_drops_temporaries(tmp_path):
    # What a publish killed between its two renames leaves: the old version aside, the new one staged.
    old = tmp_path / f".out{storage.OLD_TAG}abcd1234"
    old.mkdir()
    (old / "manifest.json").write_text("old")
    staged = tmp_path / f".out{storage.TMP_TAG}abcd1234"
    staged.mkdir()
    (staged / "half").write_text("x")
    out = tmp_path / "out"
    removed = storage.cleanup_temporaries(str(out))
    assert _tree(out) == {"manifest.json": b"old"}
    assert sorted(os.listdir(tmp_path)) == ["out"] and removed == [str(staged)]
    # Temporaries inside the folder go too; finished files stay.
    (out / "chunks").mkdir()
    (out / "chunks" / f".chunk-000001.parquet{storage.TMP_TAG}ffff").write_bytes(b"half")
    (out / "chunks" / "chunk-000000.parquet").write_bytes(b"whole")
    storage.cleanup_temporaries(str(out))
    assert sorted(os.listdir(out / "chunks")) == ["chunk-000000.parquet"]


def test_delete_helpers_only_touch_what_they_name(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    storage.delete_file(str(tmp_path / "d"))  # a folder is not a file: untouched
    storage.delete_dir(str(tmp_path / "f"))  # a file is not a folder: untouched
    assert sorted(os.listdir(tmp_path)) == ["d", "f"]
    storage.delete_dir(str(tmp_path / "d"))
    storage.delete_file(str(tmp_path / "f"))
    assert os.listdir(tmp_path) == []


def test_write_bytes_fsyncs_the_folder_after_the_rename(tmp_path, monkeypatch):
    """The rename itself must be durable: a crash right after it must not bring the old file back."""
    synced = []
    real = os.fsync

    def spy(fd):  # records what was fsynced, then fsyncs it for real
        st = os.fstat(fd)
        synced.append((st.st_ino, stat.S_ISDIR(st.st_mode)))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    storage.write_bytes(str(tmp_path / "d" / "f.json"), b"{}")
    assert (os.stat(tmp_path / "d").st_ino, True) in synced
