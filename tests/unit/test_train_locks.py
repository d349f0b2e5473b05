"""Torch-extension builds in a training worker: an orphaned build lock fails it at once, with the
fix, instead of a silent hang; the venv's ninja is the one that builds."""

from __future__ import annotations

import os
import time

import pytest

from rayworks.train.loop import STALE_LOCK_S, check_extension_locks, own_ninja_first


def test_an_old_lock_is_named_with_its_fix_and_a_fresh_one_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    op = tmp_path / "deepspeed_shm_comm"
    op.mkdir()
    (op / "deepspeed_shm_comm.so").write_bytes(b"\0")
    check_extension_locks()  # no lock: nothing to say

    lock = op / "lock"
    lock.write_bytes(b"")
    check_extension_locks()  # a build in progress (fresh lock): wait on it as torch does

    old = time.time() - STALE_LOCK_S - 60
    os.utime(lock, (old, old))
    with pytest.raises(RuntimeError) as e:
        check_extension_locks()
    msg = str(e.value)
    assert str(lock) in msg and f"rm {lock}" in msg and "killed" in msg
    assert lock.exists()  # named, never deleted: it is not rayworks' file


def test_the_venvs_ninja_goes_first_on_path_once(tmp_path, monkeypatch):
    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    monkeypatch.setattr("sys.executable", str(bindir / "python"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    own_ninja_first()
    assert os.environ["PATH"] == "/usr/bin:/bin"  # no ninja beside this Python: PATH as it was

    (bindir / "ninja").write_bytes(b"")
    own_ninja_first()
    own_ninja_first()
    assert os.environ["PATH"] == f"{bindir}:/usr/bin:/bin"
