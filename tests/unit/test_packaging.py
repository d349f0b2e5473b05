"""What the package carries and stages: the default spec, `rayworks init`, the staged job, the session-copy guard."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from rayworks.client import init as rwinit
from rayworks.config.cluster import default_spec_path, load_cluster_spec, packaged_default_spec
from rayworks.config.jobs import load_job
from rayworks.errors import ConfigError
from rayworks.jobmain import main, ray_session_dir
from rayworks.client.submit import JOB_FILE, SPEC_FILE, entrypoint, stage

REPO = Path(__file__).resolve().parents[2]


def test_packaged_defaults_are_the_checkouts_files():
    # One copy in git: the package's defaults/ link to cluster/local.yaml and jobs/configs/.
    assert packaged_default_spec().read_bytes() == (REPO / "cluster" / "local.yaml").read_bytes()
    shipped = {rel: src.read_bytes() for rel, src in rwinit.files().items()}
    want = {"cluster/local.yaml": (REPO / "cluster" / "local.yaml").read_bytes()}
    want |= {f"jobs/configs/{p.name}": p.read_bytes() for p in (REPO / "jobs" / "configs").iterdir()
             if p.suffix in (".yaml", ".jsonl")}
    assert shipped == want
    assert (REPO / "platform" / "rayworks" / "py.typed").is_file()


def test_init_writes_a_project_whose_configs_load_unchanged(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    written = rwinit.init(proj)
    assert {str(p.relative_to(proj)) for p in written} == set(rwinit.files()) | {".gitignore"}
    monkeypatch.chdir(proj)
    assert default_spec_path() == proj / "cluster" / "local.yaml"  # the project's spec is the default
    spec = load_cluster_spec()
    assert spec.storage.uri == str((proj / "artifacts").resolve())
    job = load_job(proj / "jobs" / "configs" / "train.yaml")
    assert job.data.prep_uri == str((proj / "artifacts" / "prep" / "python-docs").resolve())
    with pytest.raises(ConfigError, match="already exist.*--force"):
        rwinit.init(proj)
    rwinit.init(proj, force=True)


def test_staged_job_names_the_spec_it_was_submitted_with(tmp_path):
    spec_path = tmp_path / "elsewhere" / "spec.yaml"
    spec_path.parent.mkdir()
    data = yaml.safe_load((REPO / "cluster" / "local.yaml").read_text())
    data["storage"]["uri"] = "store"  # relative to the spec file
    data["dashboard"]["port"] = 28765
    spec_path.write_text(yaml.safe_dump(data))
    spec = load_cluster_spec(spec_path)
    cfg = tmp_path / "mine" / "my-prep.yaml"
    cfg.parent.mkdir()
    cfg.write_text(yaml.safe_dump({"kind": "prep", "name": "mine", "inputs": [{"path": "docs/*.jsonl"}]}))
    job = load_job(cfg)
    assert job.cluster is None
    wd = stage(job, spec)
    try:
        # What the job sees: a copy of the working dir somewhere else entirely.
        copy = tmp_path / "copy"
        shutil.copytree(wd, copy)
        staged = load_job(copy / JOB_FILE)
        assert staged.cluster == str(copy / SPEC_FILE)
        assert staged.cluster_spec() == spec
        assert staged.cluster_spec().storage.uri == str(spec_path.parent / "store")
        assert staged.inputs[0].path == str(cfg.parent / "docs" / "*.jsonl")
        assert entrypoint(job) == f"python -m rayworks.jobmain prep --config {JOB_FILE}"
    finally:
        shutil.rmtree(wd)


def _session_copy(tmp_path: Path) -> Path:
    """A checkout as Ray unpacks `--working-dir .`: under <session>/runtime_resources/working_dir_files/."""
    copy = tmp_path / "session_2026" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    (copy / "cluster").mkdir(parents=True)
    shutil.copy(REPO / "cluster" / "local.yaml", copy / "cluster" / "local.yaml")
    shutil.copytree(REPO / "jobs" / "configs", copy / "jobs" / "configs")
    return copy


def test_a_job_in_rays_working_dir_copy_refuses_relative_paths(tmp_path, monkeypatch, capsys):
    copy = _session_copy(tmp_path)
    assert ray_session_dir(copy) == tmp_path / "session_2026"
    assert ray_session_dir(tmp_path) is None
    monkeypatch.chdir(copy)
    assert main("prep", ["--config", "jobs/configs/prep.yaml"]) == 2
    err = capsys.readouterr().err
    assert "inside Ray's temporary copy" in err and '--base-dir "$PWD"' in err
    assert not (tmp_path / "session_2026" / "runtime_resources" / "working_dir_files" / "artifacts").exists()


def test_base_dir_must_exist(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(_session_copy(tmp_path))
    assert main("prep", ["--config", "jobs/configs/prep.yaml", "--base-dir", str(tmp_path / "nope")]) == 2
    assert "--base-dir" in capsys.readouterr().err
