"""How a job's driver joins Ray: the cluster it was submitted to, or a local instance sized for it."""

from __future__ import annotations

import math
import os


def ensure_ray(need_cpus: float = 0.0, log_to_driver: bool = True) -> None:
    """Connects to the job's cluster, or starts a local Ray instance with room for the job.

    Submitted as a Ray job (RAY_ADDRESS is set) or on a machine whose Ray cluster is
    running, this connects to that cluster. Run directly on a machine with none
    (`python jobs/train.py --config ...`), it starts a local instance with at least
    ``need_cpus + 2`` logical CPUs: Ray counts CPUs as slots, and workers that take every
    slot leave Ray Data none to read with, so the job would wait forever (STACK.md
    pitfall 3 sizes the local cluster spec the same way).
    """
    import ray

    if ray.is_initialized():
        return
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=log_to_driver)
        return
    try:
        ray.init(num_cpus=max(os.cpu_count() or 1, math.ceil(need_cpus) + 2), log_to_driver=log_to_driver)
    except ValueError as exc:  # a running local cluster was found: it keeps its own size
        if "existing cluster" not in str(exc):
            raise
        ray.init(log_to_driver=log_to_driver)


def warn_if_no_room(need_cpus: float, what: str) -> None:
    """Prints a warning when the connected cluster has no CPU left beside the job's workers."""
    import ray

    total = ray.cluster_resources().get("CPU", 0.0)
    if total < need_cpus + 1:
        print(f"[rayworks] warning: the cluster has {total:g} CPUs and {what} take {need_cpus:g}; Ray Data "
              f"needs at least one more to read (lower the CPUs per worker, or add CPUs: an autoscaling "
              f"cluster may add them)", flush=True)
