"""The layering contract (pyproject.toml, [tool.importlinter]) holds, and it bites.

config is pure schemas (imports no area and nothing client-side); the job areas (data,
train, serve, generate) and the cluster renderers do not import each other; the areas do
not import the client side (cli, submit, pipeline, lineage, monitor, preflight). Known
exceptions are listed with their reason under ``ignore_imports``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LINT_IMPORTS = str(Path(sys.executable).with_name("lint-imports"))


def lint(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath)} if pythonpath else None
    return subprocess.run([LINT_IMPORTS, "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_layering_contract_is_kept():
    proc = lint(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout and "BROKEN" not in proc.stdout, proc.stdout


def test_contract_fails_on_an_upward_import(tmp_path):
    """A copy of the package where config imports an area (the old preflight cycle) breaks the contract."""
    shutil.copytree(REPO / "platform" / "rayworks", tmp_path / "rayworks",
                    ignore=shutil.ignore_patterns("__pycache__"))
    prep = tmp_path / "rayworks" / "config" / "prep.py"
    prep.write_text(prep.read_text() + "\n\ndef _check(job):\n    from rayworks.data.inputs import expand_inputs\n"
                    "\n    return expand_inputs(job.inputs)\n")
    proc = lint(tmp_path, pythonpath=tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "rayworks.config.prep -> rayworks.data.inputs" in proc.stdout, proc.stdout


def test_every_kind_registers_importable_parts_without_heavy_imports():
    """The CLI, every config and every area preflight import without torch, vLLM, DeepSpeed or Ray."""
    code = ("import sys\n"
            "from rayworks.client import cli\n"
            "from rayworks.config.jobs import KINDS, import_path\n"
            "cli.build_parser()\n"
            "for k in KINDS.values():\n"
            "    assert isinstance(import_path(k.config), type)\n"
            "    assert k.preflight is None or callable(import_path(k.preflight))\n"
            "print(sorted(m for m in ('torch', 'vllm', 'deepspeed', 'ray', 'transformers') if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
