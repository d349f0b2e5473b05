"""`rayworks schema <kind>` for every kind README lists, and every shipped config valid against it.

Each shipped YAML (jobs/configs/*.yaml, including demo.yaml that `make demo` runs, and the
cluster specs under cluster/) is checked twice: against the JSON schema the CLI prints
(jsonschema, as an editor or CI linter would use it) and by the real loader.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RAYWORKS = str(Path(sys.executable).with_name("rayworks"))
JOB_CONFIGS = sorted((REPO / "jobs" / "configs").glob("*.yaml"))
CLUSTER_SPECS = sorted((REPO / "cluster").glob("*.yaml"))


def readme_kinds() -> list[str]:
    m = re.search(r"`rayworks schema ([a-z|\\]+)`", (REPO / "README.md").read_text())
    assert m, "README's CLI reference lists `rayworks schema <kinds>`"
    return [k for k in re.split(r"\\?\|", m.group(1)) if k]


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict]:
    """The schema of every kind, as the CLI prints it."""
    out = {}
    for kind in readme_kinds():
        proc = subprocess.run([RAYWORKS, "schema", kind], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        out[kind] = json.loads(proc.stdout)
    return out


def test_readme_lists_every_kind_and_each_schema_is_strict(schemas):
    from rayworks.config.jobs import KINDS

    assert set(schemas) == {"cluster", *KINDS}, sorted(schemas)
    for kind, s in schemas.items():
        jsonschema.validators.validator_for(s).check_schema(s)
        assert s["additionalProperties"] is False and s["properties"], kind  # unknown keys are refused
        assert all(p.get("description") for p in s["properties"].values()), kind


def test_unknown_kind_is_a_one_line_error():
    proc = subprocess.run([RAYWORKS, "schema", "nope"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "'nope' is not a job kind" in proc.stderr, proc.stderr


def test_shipped_configs_are_all_checked():
    names = {p.name for p in JOB_CONFIGS}
    assert {"demo.yaml", "prep.yaml", "train.yaml", "serve.yaml", "generate.yaml"} <= names
    assert {p.name for p in CLUSTER_SPECS} >= {"local.yaml", "aws.yaml", "gcp.yaml", "kubernetes.yaml"}


@pytest.mark.parametrize("path", JOB_CONFIGS + CLUSTER_SPECS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_config_matches_its_schema(schemas, path):
    data = yaml.safe_load(path.read_text())
    kind = "cluster" if path.parent.name == "cluster" else data["kind"]
    s = schemas[kind]
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.validators.validator_for(s)(s).iter_errors(data)]
    assert not errors, errors
    # The schema is no rubber stamp: a misspelt top-level key fails it.
    bad = {**data, "nmae": "x"}
    assert not jsonschema.validators.validator_for(s)(s).is_valid(bad)


@pytest.mark.parametrize("path", [p for p in JOB_CONFIGS if p.name != "demo.yaml"], ids=lambda p: p.name)
def test_shipped_job_loads(path):
    from rayworks.config.jobs import load_job

    job = load_job(path)
    assert job.kind == yaml.safe_load(path.read_text())["kind"]


def test_demo_pipeline_and_its_stages_load():
    """demo.yaml (what `make demo` runs) through the pipeline loader, each stage as the run builds it."""
    from rayworks.config.pipeline import load_pipeline

    pipe = load_pipeline(REPO / "jobs" / "configs" / "demo.yaml")
    assert pipe.kind == "pipeline" and pipe.name == "demo"
    links = {"prep_output": "/tmp/prep-out", "export_dir": "/tmp/export"}
    kinds = [pipe.stage_job(stage, links).kind for stage in ("prep", "train", "serve")]
    assert kinds == ["prep", "train", "serve"]


@pytest.mark.parametrize("path", CLUSTER_SPECS, ids=lambda p: p.name)
def test_shipped_cluster_spec_loads(path):
    from rayworks.config.cluster import load_cluster_spec

    assert load_cluster_spec(path).name
