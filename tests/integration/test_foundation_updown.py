"""`rayworks up` / `down` on a second cluster: down stops only what up started."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import PORT_BASE, make_spec_dict

BIN = Path(sys.executable).parent


def test_up_down_leaves_other_clusters_alone(local_cluster, tmp_path):
    from rayworks.cluster import local
    from rayworks.config.cluster import load_cluster_spec

    spec_path = tmp_path / "second.yaml"
    spec_path.write_text(yaml.safe_dump(make_spec_dict(f"rwsecond{PORT_BASE}", tmp_path, base=PORT_BASE + 50)))
    rw = str(BIN / "rayworks")
    up = subprocess.run([rw, "up", str(spec_path)], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    assert "is up" in up.stdout and f"http://127.0.0.1:{PORT_BASE + 51}" in up.stdout
    spec = load_cluster_spec(spec_path)
    assert local.probe(spec) == "up"
    down = subprocess.run([rw, "down", str(spec_path)], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert local.probe(spec) == "down"
    # The session cluster is untouched.
    assert local.probe(local_cluster.spec) == "up"
    again = subprocess.run([rw, "down", str(spec_path)], capture_output=True, text=True, timeout=60)
    assert "nothing to stop" in again.stdout
