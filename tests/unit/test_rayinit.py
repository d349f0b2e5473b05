"""ensure_ray: a directly run job gets a local Ray instance with CPUs to spare beside its workers."""

from __future__ import annotations

import os

import pytest

from rayworks.rayinit import ensure_ray


@pytest.fixture
def calls(monkeypatch):
    import ray

    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return seen


def test_local_instance_leaves_room_for_ray_data(calls):
    ensure_ray(need_cpus=40)
    assert calls == [{"num_cpus": 42, "log_to_driver": True}]


def test_local_instance_never_smaller_than_the_machine(calls):
    ensure_ray(need_cpus=0)
    assert calls[0]["num_cpus"] == max(os.cpu_count() or 1, 2)


def test_submitted_job_joins_its_cluster_as_is(calls, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    ensure_ray(need_cpus=40, log_to_driver=False)
    assert calls == [{"log_to_driver": False}]


def test_running_local_cluster_keeps_its_size(monkeypatch):
    import ray

    seen = []

    def init(**kw):
        seen.append(kw)
        if "num_cpus" in kw:
            raise ValueError("When connecting to an existing cluster, num_cpus and num_gpus must not be provided.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    ensure_ray(need_cpus=4)
    assert seen[-1] == {"log_to_driver": True} and len(seen) == 2
