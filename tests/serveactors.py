"""Which actors serve a deployment: how the rollout tests tell a kept replica from a restarted one."""

from __future__ import annotations


def replica_actors(app: str, deployment: str) -> set[str]:
    """Actor ids of the live replicas of one deployment of a Serve app (GCS's view; needs a Ray driver)."""
    from ray.util.state import list_actors

    want = f"ServeReplica:{app}:{deployment}"
    return {a.actor_id for a in list_actors(filters=[("state", "=", "ALIVE")], limit=10000,
                                            raise_on_missing_output=False) if a.class_name == want}


def replaced(app: str, deployment: str, old: set[str], timeout_s: float = 120) -> set[str]:
    """Waits until one deployment's live replicas are all new (the old ones stop after draining,
    up to the rollout's graceful shutdown); returns their actor ids."""
    import time

    deadline = time.time() + timeout_s
    while (now := replica_actors(app, deployment)) & old or not now:
        assert time.time() < deadline, f"{app}/{deployment}: old replicas {old & now} still live after {timeout_s}s"
        time.sleep(1)
    return now
