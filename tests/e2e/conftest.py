"""One real pipeline run (prep -> train -> serve through `rayworks run`) for the e2e modules.

It runs once per session, with a real Prometheus (`rayworks monitor up`) scraping the
cluster while it runs: tests/e2e/test_dashboards.py checks every dashboard panel against
the series those jobs left, tests/e2e/test_pipeline.py checks the run itself, then reruns
it. Running prep, training and serving once for both saves a full pipeline's time.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

MODEL_ID = "e2e-tiny"
ROUTE = "/e2e"
SERVE_APP = "e2e-serve"


@dataclass
class PipelineRun:
    pipe: str           # the pipeline YAML
    root: Path          # its working directory
    keys: Path          # the API key file the pipeline created
    started: float      # time.time() before the first run
    first: object       # CompletedProcess of the first `rayworks run`
    base_url: str       # http://127.0.0.1:<serve port>/e2e
    model_id: str = MODEL_ID
    app: str = SERVE_APP


@pytest.fixture(scope="session")
def prometheus(local_cluster, tmp_path_factory):
    """A real Prometheus started by `rayworks monitor up` for the session cluster."""
    url = local_cluster.spec.metrics.prometheus_url
    assert url, "tests/conftest.py gives the session spec metrics.prometheus_url (port base+90)"
    data = tmp_path_factory.mktemp("prometheus")
    proc = local_cluster.rayworks("monitor", "up", str(local_cluster.spec_path), "--data-dir", str(data), timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield url
    local_cluster.rayworks("monitor", "down", str(local_cluster.spec_path), timeout=60)


def _extra_docs(path: Path) -> None:
    """Beside the python-docs corpus: exact duplicates and too-short documents the prep job must drop."""
    import pydoc_data.topics as t

    docs = [t.topics[k] for k in sorted(t.topics)][:12]
    with open(path, "w") as f:
        for d in docs + docs[:4] + ["tiny", "x" * 3]:
            f.write(json.dumps({"text": d}) + "\n")


def pipeline_config(root: Path, spec_path: Path, keys: Path) -> dict:
    _extra_docs(root / "extra.jsonl")
    return {
        "kind": "pipeline", "name": "e2e", "cluster": str(spec_path),
        "corpus": {"source": "python-docs", "output": str(root / "corpus"), "size_mb": 1.5},
        "prep": {"kind": "prep", "name": "e2e-prep",
                 "inputs": [{"path": str(root / "corpus" / "*.jsonl"), "format": "jsonl"},
                            {"path": str(root / "extra.jsonl"), "format": "jsonl"}],
                 "clean": {"min_chars": 64}, "dedup": True,
                 "tokenizer": {"vocab_size": 512, "sample_mb": 1}, "seq_len": 64, "val_fraction": 0.05,
                 "unit_mb": 1, "execution": {"num_workers": 2}},
        "train": {"kind": "train", "name": "e2e-train", "model": {"preset": "tiny"},
                  "data": {"num_val_sequences": 32},
                  "deepspeed": {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 4,
                                "gradient_accumulation_steps": 1,
                                "optimizer": {"type": "AdamW", "params": {"lr": 0.003}},
                                "zero_optimization": {"stage": 2}},
                  # A CPU has no known peak FLOP/s: give one so the MFU panel has data too.
                  "scaling": {"num_workers": 2, "peak_flops_per_device": 1e11},
                  "run": {"num_steps": 24, "log_every_steps": 4, "eval_every_steps": 12,
                          "checkpoint_every_steps": 12}},
        "serve": {"kind": "serve", "name": SERVE_APP,
                  "models": [{"id": MODEL_ID, "accelerator": "cpu",
                              "engine": {"max_model_len": 256, "dtype": "float32", "cpu_kv_cache_gb": 1,
                                         "enforce_eager": True}}],
                  "http": {"route_prefix": ROUTE},
                  "auth": {"api_keys_file": str(keys)}},
        "smoke_test": {"prompt": "def ", "max_tokens": 8},
    }


@pytest.fixture(scope="session")
def pipeline_run(local_cluster, prometheus, tmp_path_factory) -> PipelineRun:
    """The first `rayworks run` of the e2e pipeline, with Prometheus scraping throughout."""
    root = tmp_path_factory.mktemp("e2e")
    keys = root / "keys"
    pipe = root / "pipeline.yaml"
    pipe.write_text(yaml.safe_dump(pipeline_config(root, local_cluster.spec_path, keys), sort_keys=False))
    started = time.time()
    first = local_cluster.rayworks("run", str(pipe), "--quiet", timeout=1500)
    return PipelineRun(pipe=str(pipe), root=root, keys=keys, started=started, first=first,
                       base_url=f"http://127.0.0.1:{local_cluster.serve_port}{ROUTE}")
