"""A real MLflow server started by rayworks (``rayworks.tracking.server``) for a test module, plus readers.

Ports: RAYWORKS_TEST_PORT_BASE + 93 (tests/integration/test_train_run.py), + 94
(tests/integration/test_tracking.py) and + 96 (tests/integration/test_generate_job.py); + 95 is
never listened on (a stopped server).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

import yaml

PORT_BASE = int(os.environ.get("RAYWORKS_TEST_PORT_BASE", "27000"))
TRAIN_PORT, TRACKING_PORT, DEAD_PORT = PORT_BASE + 93, PORT_BASE + 94, PORT_BASE + 95
GENERATE_PORT = PORT_BASE + 96
TRAIN_METRICS = ("train_loss", "val_loss", "lr", "grad_norm", "num_tokens")  # the same on every rank


def write_spec(root: Path, port: int, name: str = "rwtrack") -> Path:
    """A local spec whose only purpose is its tracking section (storage under ``root``)."""
    (root / "artifacts").mkdir(parents=True, exist_ok=True)
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": f"{name}{PORT_BASE}", "head": {"num_cpus": 2, "memory_gb": 2},
                                    "storage": {"uri": str(root / "artifacts")},
                                    "tracking": {"port": port}}))
    return path


@contextmanager
def mlflow_server(root: Path, port: int):
    """Starts MLflow through rayworks, points this process's jobs at it (MLFLOW_TRACKING_URI), stops it."""
    from rayworks.config.cluster import load_cluster_spec
    from rayworks.tracking import server

    spec = load_cluster_spec(write_spec(root, port))
    server.down(spec, quiet=True)  # a leftover of a killed session
    state = server.up(spec, timeout_s=300, quiet=True)
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = state["url"]
    try:
        yield state["url"]
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
        server.down(spec, quiet=True)


@contextmanager
def server_in_background(root: Path, port: int):
    """Starts MLflow through rayworks in a thread, so that its start (~40 s, SQLite migrations) overlaps
    the caller's own work; yields a function that waits for the server and returns its URL. Stops it.

    Jobs reach it through their runtime env (``MLFLOW_TRACKING_URI``); this process's env is left alone.
    """
    import threading

    from rayworks.config.cluster import load_cluster_spec
    from rayworks.tracking import server

    spec = load_cluster_spec(write_spec(root, port))
    server.down(spec, quiet=True)  # a leftover of a killed session
    box: dict = {}

    def start():
        try:
            box["url"] = server.up(spec, timeout_s=600, quiet=True)["url"]
        except Exception as exc:  # noqa: BLE001 - raised in the test that waits for it
            box["error"] = exc

    th = threading.Thread(target=start, daemon=True)
    th.start()

    def url() -> str:
        th.join()
        if "error" in box:
            raise box["error"]
        return box["url"]

    try:
        yield url
    finally:
        th.join()
        server.down(spec, quiet=True)


def client(url: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=url, registry_uri=url)


def history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of a metric, in the order MLflow returns them."""
    return [(m.step, m.value) for m in client(url).get_metric_history(run_id, key)]


def reported_at_checkpoints(out: Path) -> dict[int, dict]:
    """What the job reported to Ray Train with each kept checkpoint (Ray Train's own snapshot)."""
    snap = json.loads((out / "ray_train" / "checkpoint_manager_snapshot.json").read_text())
    return {int(r["metrics"]["step"]): r["metrics"] for r in snap["checkpoint_results"]}


def assert_logged_equals_reported(url: str, run_id: str, out: Path) -> None:
    """At every checkpointed step, MLflow holds exactly the values the job reported to Ray Train."""
    reported = reported_at_checkpoints(out)
    assert reported, "no checkpoint results in Ray Train's snapshot"
    for step, metrics in reported.items():
        for key in TRAIN_METRICS:
            if metrics.get(key) is None:
                continue
            logged = dict(history(url, run_id, key))
            assert logged.get(step) == float(metrics[key]), (key, step, logged, metrics)


def expected_log_steps(num_steps: int, log_every: int, eval_every: int, ckpt_every: int) -> list[int]:
    """The steps a run reports a window at (rayworks.train.loop.LoopConfig.is_*_step)."""
    return [s for s in range(1, num_steps + 1)
            if s % log_every == 0 or s % eval_every == 0 or s % ckpt_every == 0 or s == num_steps]
