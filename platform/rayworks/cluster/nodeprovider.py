"""The node provider of local multi-node clusters: Ray's fake multi-node provider, minus a leak.

Ray's ``FakeMultiNodeProvider`` starts each node in the autoscaler monitor's process
(``ray._private.node.Node``). When a node misses Ray's fixed 30 s startup window (a loaded
machine: its agent is slow to write its port file), the launch fails but the processes it had
started (raylet, log monitor, agents) keep running, and each retry adds more, which loads the
machine further. This subclass kills what a failed launch left behind; Ray's autoscaler then
retries as usual. Everything else (which node, when, how many) is Ray's.

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
        with self.lock:  # launches are serial: what appears under us meanwhile is this launch's
            before = descendants({os.getpid()})
            try:
                return super()._create_node_with_resources_and_labels(node_config, tags, count, resources, labels)
            except Exception:
                for pid in descendants({os.getpid()}) - before:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                raise
