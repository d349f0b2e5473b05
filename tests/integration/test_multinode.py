"""The multi-node cluster on one machine (tests/multinode_fixture.py): Ray's own autoscaler adds a
`cpu` node when a task asks for more than the 1-CPU head has and removes it after the idle timeout;
prep spreads over nodes with the same bytes as a serial run; training places its 2 gloo workers on
2 nodes; a node SIGKILLed under training is replaced and the run ends with the same batches.

Every observation of nodes comes from the autoscaler's state in GCS (rayworks.cluster.multinode).
Figures (seconds) are printed with `-s`; no test asserts on time.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest

import prep_corpus
from test_train_run import train_dict
from tests.multinode_fixture import GROUP, GROUP_CPUS, GROUP_MAX
from tests.prepfixture import make_prep_output

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
NUM_STEPS = 12
FIGURES: dict[str, float] = {}


def _figure(name: str, value: float) -> None:
    FIGURES[name] = round(value, 1)
    print(f"[multinode figure] {name}: {value:.1f}")


def _alive(mc) -> int:
    return len(mc.workers())


def test_scale_up_on_pending_demand_and_status_shows_groups(ray_on_multinode):
    import ray

    mc = ray_on_multinode
    before = _alive(mc)

    @ray.remote(num_cpus=GROUP_CPUS)
    class Holder:  # holds a whole `cpu` node while alive: two at once need two nodes
        def node(self):
            return ray.get_runtime_context().get_node_id()

    t0 = time.time()
    holders = [Holder.remote() for _ in range(2)]
    refs = [h.node.remote() for h in holders]
    counts, demand_seen = [], []
    while len(ray.wait(refs, num_returns=2, timeout=0.3)[0]) < 2:
        st = mc.status()
        counts.append((round(time.time() - t0, 1), sum(n["group"] == GROUP and n["state"] in ("active", "idle")
                                                     for n in st["nodes"])))
        demand_seen += [d["bundle"] for d in st["pending_demand"]]
        assert time.time() - t0 < 300, f"tasks never ran; node counts {counts}"
    nodes = set(ray.get(refs))
    for h in holders:
        ray.kill(h)
    grown = [t for t, c in counts if c > before]
    if grown:
        _figure("pending demand -> node joined (s)", grown[0])
    assert len(nodes) == 2, nodes
    workers = {n["node_id"] for n in mc.workers()}
    assert nodes <= workers, (nodes, workers)  # both ran on `cpu` nodes, none on the 1-CPU head
    if before == 0:  # a fresh cluster: the autoscaler saw the demand and added nodes for it
        assert {"CPU": float(GROUP_CPUS)} in demand_seen, demand_seen
        assert counts[0][1] == 0 and max(c for _, c in counts) >= 1, counts
    assert max(c for _, c in counts) <= GROUP_MAX, counts

    # `rayworks status` prints the autoscaler's view: the head and the cpu nodes with their resources.
    import subprocess
    import sys

    proc = subprocess.run([str(Path(sys.executable).with_name("rayworks")), "status", str(mc.spec_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [ln.split() for ln in proc.stdout.splitlines()]
    assert any(r[:1] == ["head"] for r in rows), proc.stdout
    assert sum(r[:1] == [GROUP] and r[1] in ("active", "idle") and f"/{GROUP_CPUS}," in " ".join(r)
               for r in rows) >= 2, proc.stdout
    assert "pending demand:" in proc.stdout


def _finished_task_nodes(mc) -> dict[str, str]:
    from ray.util.state import list_tasks

    return {t.task_id: t.node_id for t in list_tasks(address=mc.spec.dashboard_url, limit=10000,
                                                     filters=[("state", "=", "FINISHED")],
                                                     raise_on_missing_output=False)}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def serial_prep(ray_on_multinode, tmp_path_factory):
    """The prep corpus, its serial (one 1-CPU task at a time) output and the output path every run uses.

    Every run writes to the same path (the manifest records it) and must produce these bytes."""
    from rayworks.config.jobs import load_job_data
    from rayworks.data.job import run

    root = tmp_path_factory.mktemp("mnprepcorpus")
    paths, out = prep_corpus.build(root / "corpus", size_mb=0.3), root / "out"
    run(load_job_data(prep_corpus.job_dict(paths, out, execution={"num_workers": 1}), "test", REPO))
    return paths, _tree(out), out


def _spread_prep(mc, paths, out: Path, watch=None) -> tuple[float, list]:
    """Prep with 2-CPU tasks, which only `cpu` nodes can hold, 3 at once; ``watch(seen, stop)`` runs beside it."""
    from ray.autoscaler.sdk import request_resources

    from rayworks.config.jobs import load_job_data
    from rayworks.data.job import run

    # Ray Data sizes its parallelism by the resources it sees, so nodes are asked for up front, through
    # the autoscaler (what a user does before a big job: `ray.autoscaler.sdk.request_resources`).
    request_resources(bundles=[{"CPU": GROUP_CPUS}] * GROUP_MAX)
    seen: list = []
    stop = threading.Event()
    shutil.rmtree(out, ignore_errors=True)
    try:
        mc.wait_for(lambda: len(mc.workers()) == GROUP_MAX)
        t = threading.Thread(target=watch, args=(seen, stop), daemon=True) if watch else None
        t0 = time.time()
        if t:
            t.start()
        run(load_job_data(prep_corpus.job_dict(paths, out, execution={
            "num_workers": GROUP_MAX, "num_cpus_per_worker": GROUP_CPUS}), "test", REPO))
        return time.time() - t0, seen
    finally:
        stop.set()
        request_resources(bundles=[])


def test_prep_spread_over_nodes_is_byte_identical_to_a_serial_run(ray_on_multinode, serial_prep):
    paths, serial, out = serial_prep
    before = _finished_task_nodes(ray_on_multinode)
    took, _ = _spread_prep(ray_on_multinode, paths, out)
    _figure("prep spread over 3 nodes (s)", took)
    nodes = {n for t, n in _finished_task_nodes(ray_on_multinode).items() if t not in before}
    workers = {n["node_id"] for n in ray_on_multinode.workers(("active", "idle", "dead"))}
    assert len(nodes & workers) >= 2, (nodes, workers)
    assert _tree(out) == serial


def _running_a_task(temp_dir: str, node_id: str) -> bool:
    """Whether a worker process of this node is executing a Ray Data map task right now.

    Read from /proc, not the state API (too slow for a job of a few seconds): Ray titles a worker
    process `ray::<task name>` (Ray Data's: `ray::Map(_call)`) while it runs a task, `ray::IDLE` otherwise."""
    from rayworks.cluster.multinode import node_pids

    for pid in node_pids(temp_dir, node_id):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if title.startswith(b"ray::") and not title.startswith(b"ray::IDLE"):
            return True
    return False


@pytest.mark.timeout(600)
def test_node_killed_under_prep_the_job_finishes_byte_identical(ray_on_multinode, serial_prep):
    from rayworks.cluster import multinode

    mc = ray_on_multinode
    paths, serial, out = serial_prep
    temp_dir = mc.spec.local.temp_dir

    def watch(seen, stop):
        # Once the inputs are hashed (plan.json written) and a `cpu` node runs a task of a later
        # stage, SIGKILL that node: cleaning, dedup, tokenizer and packing are still to come.
        workers = sorted(n["node_id"] for n in mc.workers())
        while not stop.is_set():
            if any(out.parent.glob(f".{out.name}*/_work/plan.json")) or (out / "_work" / "plan.json").is_file():
                busy = [n for n in workers if _running_a_task(temp_dir, n)]
                if busy:
                    seen.append({"node": busy[0], "t": time.time(),
                                 "pids": multinode.kill_node(temp_dir, busy[0])})
                    return
            stop.wait(0.05)

    took, seen = _spread_prep(mc, paths, out, watch)
    t_done = time.time()
    assert seen, "no `cpu` node was seen running a task of the job"
    assert len(seen[0]["pids"]) >= 2, seen  # the raylet and at least the worker running the task
    assert any(n["node_id"] == seen[0]["node"] and n["state"] == "dead" for n in mc.status()["nodes"])
    _figure("prep with a node killed (s)", took)
    _figure("prep node kill -> job finished (s)", t_done - seen[0]["t"])
    assert _tree(out) == serial  # the same bytes as the undisturbed runs (serial and spread)


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return make_prep_output(tmp_path_factory.mktemp("mnprep") / "prep", seq_len=64, max_train_sequences=600)


def _two_node_train(prep: Path, out: Path, name: str) -> dict:
    d = train_dict(prep, out, name)
    # One role:general per node: each worker needs a node of its own (the head has none).
    d["scaling"].update({"num_cpus_per_worker": 1, "resources_per_worker": {"role:general": 1}})
    return d


def _train_worker_nodes(mc) -> list[str]:
    from ray.util.state import list_actors

    return sorted(a.node_id for a in list_actors(address=mc.spec.dashboard_url, filters=[("class_name", "=", "RayTrainWorker"),
                                                          ("state", "=", "ALIVE")], raise_on_missing_output=False))


def _run_with_watcher(d: dict, watch) -> tuple[dict, list]:
    from rayworks.config.jobs import load_job_data
    from rayworks.train.job import run

    seen: list = []
    stop = threading.Event()
    t = threading.Thread(target=watch, args=(seen, stop), daemon=True)
    t.start()
    try:
        return run(load_job_data(d, "test", Path("/"))), seen
    finally:
        stop.set()
        t.join(timeout=30)


@pytest.fixture(scope="module")
def two_node_run(ray_on_multinode, prep, tmp_path_factory):
    mc = ray_on_multinode
    out = tmp_path_factory.mktemp("mntrain") / "ref"

    def watch(seen, stop):
        while not stop.is_set():
            nodes = _train_worker_nodes(mc)
            if len(nodes) == 2:
                seen.append(nodes)
            stop.wait(1.0)

    return _run_with_watcher(_two_node_train(prep, out, "mnref"), watch)


def test_training_runs_two_workers_on_two_nodes(ray_on_multinode, two_node_run):
    m, seen = two_node_run
    assert m["steps"] == m["optimizer_steps"] == NUM_STEPS and m["resumed_from"] == []
    assert m["val_loss"] < m["val_loss_step0"] - 0.3, m
    assert seen, "never saw both training workers alive"
    workers = {n["node_id"] for n in ray_on_multinode.workers(("active", "idle", "dead"))}
    assert all(len(set(pair)) == 2 and set(pair) <= workers for pair in seen), (seen, workers)


@pytest.mark.timeout(900)
def test_node_killed_under_training_is_replaced_and_the_run_ends_with_the_same_batches(
        ray_on_multinode, prep, two_node_run, tmp_path):
    from rayworks.cluster import multinode

    mc = ray_on_multinode
    ref, _ = two_node_run
    out = tmp_path / "killed"
    snapshot = out / "ray_train" / "checkpoint_manager_snapshot.json"

    def watch(seen, stop):
        # Once Ray Train registered the step-4 checkpoint, SIGKILL every process of one worker's node.
        while not stop.is_set():
            if snapshot.is_file() and "checkpoint_00000004" in snapshot.read_text(errors="replace"):
                nodes = _train_worker_nodes(mc)
                if nodes:
                    t_kill = time.time()
                    pids = multinode.kill_node(mc.spec.local.temp_dir, nodes[-1])
                    seen.append({"node": nodes[-1], "pids": pids, "t": t_kill})
                    break
            stop.wait(0.3)
        while seen and not stop.is_set():  # recovery: two train workers alive again, the dead node not one
            nodes = _train_worker_nodes(mc)
            if len(nodes) == 2 and seen[0]["node"] not in nodes:
                seen.append({"recovered_s": time.time() - seen[0]["t"], "nodes": nodes})
                return
            stop.wait(0.5)

    m, seen = _run_with_watcher(_two_node_train(prep, out, "mnkill"), watch)
    assert seen and len(seen[0]["pids"]) >= 2, seen  # the raylet and at least the train worker
    killed = seen[0]["node"]
    assert any(n["node_id"] == killed and n["state"] == "dead" for n in mc.status()["nodes"])
    if len(seen) > 1:
        _figure("train node kill -> 2 workers running again (s)", seen[1]["recovered_s"])
    assert m["resumed_from"] and m["resumed_from"][0] >= 4, m
    assert m["steps"] == m["optimizer_steps"] == ref["optimizer_steps"] == NUM_STEPS
    assert m["data_digest"] == ref["data_digest"]  # the same batches, in the same order, once each
    assert m["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-4)


def test_idle_nodes_are_removed_after_the_idle_timeout(ray_on_multinode):
    import ray

    mc = ray_on_multinode
    if not _alive(mc):  # something to remove: one node, made busy once
        @ray.remote(num_cpus=GROUP_CPUS)
        def touch():
            return 1

        ray.get(touch.remote(), timeout=300)
    idle_at = {}

    def gone():
        workers = mc.workers(("active", "idle"))
        for n in workers:
            if n["state"] == "idle" and n["node_id"] not in idle_at:
                idle_at[n["node_id"]] = time.time() - (n["idle_s"] or 0)
        return not workers

    t0 = time.time()
    counts = []
    mc.wait_for(lambda: counts.append(_alive(mc)) or gone(), timeout_s=300, every_s=1.0)
    if idle_at:
        _figure("idle -> node removed (s)", time.time() - min(idle_at.values()))
    _figure("scale-down wait observed (s)", time.time() - t0)
    assert counts[0] >= 1 and counts[-1] == 0, counts
    dead = [n for n in mc.status()["nodes"] if n["group"] == GROUP and n["state"] == "dead"]
    assert dead  # removed by the autoscaler: GCS keeps them as dead nodes
    print(json.dumps(FIGURES))
