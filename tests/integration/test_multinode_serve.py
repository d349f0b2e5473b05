"""Serving on the multi-node cluster (tests/multinode_serve.py): 2 replicas on 2 `cpu` nodes behind one
front door, and a node SIGKILLed under a steady stream of authenticated requests.

Runs after test_multinode.py (module order), whose last test saw the idle nodes removed: the app's
placement groups make Ray's autoscaler launch the nodes again. Figures (seconds, counts) are printed
with `-s`; no test asserts on time.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from tests.multinode_fixture import GROUP, GROUP_MAX
from tests.multinode_serve import REPLICAS

pytestmark = pytest.mark.integration
FIGURES: dict[str, float] = {}


def _figure(name: str, value: float) -> None:
    FIGURES[name] = round(value, 1)
    print(f"[multinode figure] {name}: {value:.1f}")


@pytest.mark.timeout(1200)  # the app's fixture: two nodes launched, two engines started on them
def test_two_replicas_on_two_nodes_answer_through_one_front_door(ray_on_multinode, multinode_app):
    app, mc = multinode_app, ray_on_multinode
    assert app.replica_states() == {"RUNNING": REPLICAS}
    nodes = app.replica_nodes()
    workers = {n["node_id"] for n in mc.workers()}
    # One replica per node, both on `cpu` nodes: a replica's 2-CPU bundle never fits the 1-CPU head.
    assert len(nodes) == REPLICAS == len(set(nodes)) and set(nodes) <= workers, (nodes, workers)
    for prompt in ("def", "import os", "class", "return"):
        r = app.complete(prompt)
        assert r.status_code == 200, r.text[:500]
        assert r.json()["usage"]["completion_tokens"] == 4
    # The front door keeps the gate: no key, or a wrong one, is refused on the multi-node cluster too.
    body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
    assert requests.post(app.url + "/v1/completions", json=body, timeout=30).status_code == 401
    assert requests.post(app.url + "/v1/completions", json=body, timeout=30,
                         headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert requests.get(app.url + "/health", timeout=30).json() == {"status": "ok", "models": ["tiny"]}


@pytest.mark.timeout(900)
def test_node_killed_under_serving_is_replaced_and_no_later_request_fails(ray_on_multinode, multinode_app):
    from rayworks.cluster import multinode

    app, mc = multinode_app, ray_on_multinode
    results: list[tuple[float, float, int, str]] = []  # (start, end, status, detail); status -1: no answer
    states: list[tuple[float, dict]] = []  # (time, Serve controller's replica states)
    stop = threading.Event()

    def stream():  # one client, short completions back to back, each on a fresh connection
        while not stop.is_set():
            t0 = time.time()
            try:
                r = app.complete(timeout=60)
                ok = r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
                results.append((t0, time.time(), r.status_code if ok or r.status_code != 200 else -2,
                                "" if ok else r.text[:200]))
            except Exception as exc:  # noqa: BLE001 - a dropped connection is a failed request too
                results.append((t0, time.time(), -1, repr(exc)[:200]))
            stop.wait(0.05)

    def poll():  # when the controller marks the replica dead, and when it has 2 running again
        while not stop.is_set():
            try:
                states.append((time.time(), app.replica_states()))
            except Exception as exc:  # noqa: BLE001 - a failed poll is just a gap in the record
                states.append((time.time(), {"error": repr(exc)[:100]}))
            stop.wait(0.2)

    threads = [threading.Thread(target=stream, daemon=True), threading.Thread(target=poll, daemon=True)]
    for t in threads:
        t.start()
    try:
        mc.wait_for(lambda: sum(r[2] == 200 for r in results) >= 5, timeout_s=120)
        before = app.replica_nodes()
        assert len(set(before)) == REPLICAS, before
        victim = before[0]
        t_kill = time.time()
        pids = multinode.kill_node(mc.spec.local.temp_dir, victim)

        def recovered():
            if not (states and states[-1][0] > t_kill and states[-1][1] == {"RUNNING": REPLICAS}):
                return None
            nodes = app.replica_nodes()
            return nodes if len(set(nodes)) == REPLICAS and victim not in nodes else None

        after = mc.wait_for(recovered, timeout_s=600, every_s=0.5)
        t_recovered = time.time()
        n_at_recovery = len(results)
        mc.wait_for(lambda: sum(r[2] == 200 for r in results[n_at_recovery:]) >= 5, timeout_s=120)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=90)

    assert len(pids) >= 2, pids  # the raylet and at least the replica (and its engine)
    assert any(n["node_id"] == victim and n["state"] == "dead" for n in mc.status()["nodes"])
    # When Serve's controller marked the replica dead: its first state after the kill with fewer running.
    marked = [t for t, s in states if t > t_kill and s.get("RUNNING", 0) < REPLICAS and "error" not in s]
    assert marked, f"the controller never showed the lost replica; states after the kill: {states[-5:]}"
    t_marked = marked[0]
    in_flight = [r for r in results if r[0] < t_kill < r[1]]
    window = [r for r in results if t_kill <= r[0] < t_marked]
    later = [r for r in results if r[0] >= t_marked]
    failed = {"in flight at the kill": [r for r in in_flight if r[2] != 200],
              "started between kill and mark": [r for r in window if r[2] != 200],
              "started after Serve marked it dead": [r for r in later if r[2] != 200]}
    _figure("serve node kill -> Serve marked the replica dead (s)", t_marked - t_kill)
    _figure("serve node kill -> 2 replicas running again (s)", t_recovered - t_kill)
    for k, v in failed.items():
        _figure(f"failed requests {k}", len(v))
    _figure("requests during the test", len(results))
    print(json.dumps({"figures": FIGURES, "failures": {k: v[:3] for k, v in failed.items()}}, default=str))
    assert not failed["started after Serve marked it dead"], failed
    assert sum(r[2] == 200 for r in later) >= 5  # answered on the surviving and the replacement replica
    workers = {n["node_id"] for n in mc.workers()}
    assert set(after) <= workers and len([n for n in mc.workers() if n["group"] == GROUP]) <= GROUP_MAX
    r = app.complete("import os")
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
