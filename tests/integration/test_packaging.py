"""rayworks as an installed package, and README's plain `ray job submit` command, on the session cluster.

The wheel is built from this checkout and installed (`--no-deps`) into a fresh venv whose
site-packages reach this venv's dependencies through a .pth line (a plain path line: the
checkout's editable install is not picked up, so `rayworks` is the wheel's). From temporary
folders outside the checkout: `rayworks init`, `rayworks validate` (default spec: the
project's, then the packaged one under RAYWORKS_HOME), and `rayworks submit` of a config
without `cluster:` with `--cluster SPEC`, which must run against that spec. README's command is
run exactly as printed (only the address is the session cluster's), from a folder laid out
as a fresh clone; then without `--base-dir`, which must refuse before any work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv with the rayworks wheel installed; returns its bin folder."""
    root = tmp_path_factory.mktemp("pkg")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(root / "dist"), str(REPO)], check=True, capture_output=True, timeout=600)
    wheel = next((root / "dist").glob("rayworks-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "reuse_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", str(wheel)], check=True, capture_output=True, timeout=600)
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import rayworks; print(rayworks.__file__)"],
                           check=True, capture_output=True, text=True, cwd=root).stdout.strip()
    assert Path(where).is_relative_to(site), f"rayworks imported from {where}, not the wheel"
    return venv / "bin"


def _run(bin_dir: Path, args: list[str], cwd: Path, env: dict | None = None, timeout: float = 900):
    full = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
            **(env or {})}
    return subprocess.run([str(bin_dir / "rayworks"), *args], cwd=cwd, env=full, capture_output=True, text=True,
                          timeout=timeout)


def test_installed_package_inits_validates_and_submits(installed, local_cluster, tmp_path):
    home = tmp_path / "home"
    env = {"RAYWORKS_HOME": str(home)}
    proj = tmp_path / "proj"
    r = _run(installed, ["init", str(proj)], tmp_path, env)
    assert r.returncode == 0, r.stderr
    assert (proj / "cluster" / "local.yaml").read_bytes() == (REPO / "cluster" / "local.yaml").read_bytes()
    assert (proj / "jobs" / "configs" / "demo.yaml").read_bytes() == (REPO / "jobs" / "configs" / "demo.yaml").read_bytes()
    r = _run(installed, ["corpus", "python-docs", "artifacts/corpus/python-docs", "--size-mb", "0.3"], proj, env)
    assert r.returncode == 0, r.stderr

    # In the project: its own cluster/local.yaml is the default spec.
    r = _run(installed, ["validate", "jobs/configs/prep.yaml"], proj, env)
    assert r.returncode == 0 and "preflight against 'local' passed" in r.stdout, r.stdout + r.stderr
    assert not home.exists()

    # A config of the user's own, elsewhere, without `cluster:`.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my-prep.yaml").write_text(
        "kind: prep\nname: pkg-prep\ninputs:\n  - path: ../proj/artifacts/corpus/python-docs/*.jsonl\n"
        "tokenizer: {vocab_size: 300, sample_mb: 0.2}\nseq_len: 32\nunit_mb: 0.1\n")
    # No project here and no checkout beside the installed package: the packaged default, copied under RAYWORKS_HOME.
    r = _run(installed, ["validate", "my-prep.yaml"], mine, env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (home / "cluster" / "local.yaml").read_bytes() == (REPO / "cluster" / "local.yaml").read_bytes()

    r = _run(installed, ["submit", "my-prep.yaml", "--cluster", str(local_cluster.spec_path)], mine, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    manifest = json.loads((local_cluster.storage / "prep" / "pkg-prep" / "manifest.json").read_text())
    assert manifest["counts"]["sequences"] > 0
    assert not (home / "artifacts").exists()  # the job used the spec it was submitted with

    r = _run(installed, ["status", str(local_cluster.spec_path)], mine, env, timeout=120)
    assert r.returncode == 0 and "jobs:" in r.stdout, r.stdout + r.stderr


def readme_command() -> str:
    """README's plain-Ray `ray job submit` command, continuation lines joined."""
    text = (REPO / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        if "ray job submit" in block and "--working-dir" in block:
            return re.sub(r"\\\n\s*", "", block).strip()
    raise AssertionError("README has no `ray job submit --working-dir` command")


@pytest.fixture
def clone(tmp_path) -> Path:
    """A folder laid out as a fresh clone after `make demo`'s corpus step: tracked files plus artifacts/corpus."""
    root = tmp_path / "clone"
    shutil.copytree(REPO / "jobs", root / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "cluster").mkdir()
    shutil.copy(REPO / "cluster" / "local.yaml", root / "cluster" / "local.yaml")
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    from rayworks.data.corpus import build_python_docs

    build_python_docs(root / "artifacts" / "corpus" / "python-docs", size_mb=0.3, shard_mb=0.15)
    return root


def _bash(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _session_copies(local_cluster) -> list[Path]:
    return list(Path(local_cluster.spec.local.temp_dir).glob("session_*/runtime_resources/working_dir_files/*"))


def test_readme_plain_ray_command_reads_and_writes_the_users_folder(local_cluster, clone):
    cmd = readme_command()
    assert '--base-dir "$PWD"' in cmd and cmd.startswith("RAY_AUTH_MODE=token ray job submit")
    r = _bash(cmd.replace("http://127.0.0.1:8265", local_cluster.dashboard_url), clone)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "succeeded" in (r.stdout + r.stderr).lower()
    manifest = json.loads((clone / "artifacts" / "prep" / "python-docs" / "manifest.json").read_text())
    assert manifest["counts"]["sequences"] > 0
    assert all(i["path"].startswith(str(clone)) for i in manifest["inputs"])
    assert not [p for p in _session_copies(local_cluster) if (p.parent / "artifacts").exists()
                or (p / "artifacts").exists()]


def test_without_base_dir_the_job_refuses_before_any_work(local_cluster, clone):
    cmd = readme_command().replace(' --base-dir "$PWD"', "")
    r = _bash(cmd.replace("http://127.0.0.1:8265", local_cluster.dashboard_url), clone)
    out = r.stdout + r.stderr
    assert "inside Ray's temporary copy" in out and '--base-dir "$PWD"' in out, out[-3000:]
    assert "succeeded" not in out.lower()
    assert not (clone / "artifacts" / "prep").exists()
    assert not [p for p in _session_copies(local_cluster) if (p.parent / "artifacts").exists()
                or (p / "artifacts").exists()]
