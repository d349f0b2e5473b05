"""The node provider of local multi-node clusters: Ray's fake multi-node provider, minus a leak.

Ray's ``FakeMultiNodeProvider`` starts each node in the autoscaler monitor's process
(``ray._private.node.Node``). When a node misses Ray's fixed 30 s startup window (a loaded
machine: its agent is slow to write its port file), the launch fails but the processes it had
started (raylet, log monitor, agents) keep running, and each retry adds more, which loads the
machine further. This subclass kills what a failed launch left behind; Ray's autoscaler then
retries as usual. Everything else (which node, when, how many) is Ray's.

Each node also gets a runtime-env folder of its own (``runtime_resources_<node id>`` in the
shared session folder), as every node of a real cluster has. Ray's fake nodes otherwise share
the head's: a job actor starting on a worker node re-unpacks the job's ``working_dir`` there
(Ray unpacks with overwrite), deleting the folder the job's driver on the head runs in, and
the driver then dies on its next import ("Cannot load libtorch_cpu.so") or file write.

Not fixed here: under heavy load (load average 40+ on 2 cores) a raylet exits when its
dashboard agent has not written its port file within 15 s (``WaitForDashboardAgentPorts``),
so launches keep failing until the load drops.
"""

from __future__ import annotations

import os
import signal

from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider

from rayworks.cluster.multinode import descendants


class LocalNodeProvider(FakeMultiNodeProvider):
    """FakeMultiNodeProvider that cleans up after a failed node launch."""

    def _create_node_with_resources_and_labels(self, node_config, tags, count, resources, labels):
        import ray._private.parameter as parameter

        with self.lock:  # launches are serial: what appears under us meanwhile is this launch's
            before = descendants({os.getpid()})
            ray_params = parameter.RayParams

            def own_runtime_env_dir(*args, **kwargs):
                node_id = (kwargs.get("env_vars") or {}).get("RAY_OVERRIDE_NODE_ID_FOR_TESTING")
                if node_id and not kwargs.get("runtime_env_dir_name"):
                    kwargs["runtime_env_dir_name"] = f"runtime_resources_{node_id}"
                return ray_params(*args, **kwargs)

            # The parent builds its RayParams inline; this launch (serial, under the lock) adds one field.
            parameter.RayParams = own_runtime_env_dir
            try:
                return super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
            except Exception:
                for pid in descendants({os.getpid()}) - before:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                raise
            finally:
                parameter.RayParams = ray_params
