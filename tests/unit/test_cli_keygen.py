"""CLI commands that need no cluster: `rayworks serve keygen`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RAYWORKS = str(Path(sys.executable).with_name("rayworks"))


def keygen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([RAYWORKS, "serve", "keygen", *args], capture_output=True, text=True, timeout=60)


def test_serve_keygen_writes_a_private_key_and_keeps_an_existing_one(tmp_path):
    f = tmp_path / "keys" / "serve_api_keys"  # the folder does not exist yet
    first = keygen("--file", str(f))
    assert first.returncode == 0, first.stderr
    key = f.read_text()
    assert f.stat().st_mode & 0o777 == 0o600
    assert key.endswith("\n") and len(key.strip()) >= 32 and key.count("\n") == 1
    assert key.strip() not in first.stdout + first.stderr  # the key is never printed
    # Again without --force: the file (and every client holding the key) is left alone.
    again = keygen("--file", str(f))
    assert again.returncode == 0 and "exists" in again.stdout and "--force" in again.stdout
    assert f.read_text() == key
    # --force: a new key, still 0600.
    forced = keygen("--file", str(f), "--force")
    assert forced.returncode == 0, forced.stderr
    assert f.read_text() != key and f.stat().st_mode & 0o777 == 0o600


def test_serve_keygen_force_tightens_a_world_readable_file(tmp_path):
    f = tmp_path / "serve_api_keys"
    f.write_text("old\n")
    f.chmod(0o644)
    assert keygen("--file", str(f), "--force").returncode == 0
    assert f.read_text() != "old\n" and f.stat().st_mode & 0o777 == 0o600
