"""Benchmarks leave nothing running (tests/bench/procs.py): on Ctrl-C, on SIGTERM, and when an
intermediate process died first and left its child (like vLLM's server) orphaned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

# A stand-in for a benchmark: it starts, through owned(), a launcher that starts a "server" in a
# session of its own which ignores SIGTERM (as a busy vLLM server may), prints every pid, and waits.
SCRIPT = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
from procs import install, owned
install()
server = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)")
launcher = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', %r], start_new_session=True); "
            "print(p.pid, flush=True); time.sleep(600)") % server
with owned([sys.executable, "-c", launcher], grace_s=2, stdout=subprocess.PIPE, text=True) as proc:
    server_pid = int(proc.stdout.readline())
    print(json.dumps({"launcher": proc.pid, "server": server_pid}), flush=True)
    time.sleep(600)
"""


def _start(tmp_path: Path) -> tuple[subprocess.Popen, dict]:
    script = tmp_path / "fake_bench.py"
    script.write_text(SCRIPT)
    bench = subprocess.Popen([sys.executable, str(script), str(BENCH)], stdout=subprocess.PIPE, text=True)
    pids = json.loads(bench.stdout.readline())
    assert psutil.pid_exists(pids["server"]) and psutil.pid_exists(pids["launcher"])
    return bench, pids


def _gone(pid: int, timeout_s: float = 30) -> bool:
    try:
        p = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    try:
        p.wait(timeout_s)  # a grandchild is not ours to wait on; psutil polls until it is gone
    except psutil.TimeoutExpired:
        return p.status() == psutil.STATUS_ZOMBIE
    return True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_benchmark_stops_its_whole_tree(tmp_path, sig):
    bench, pids = _start(tmp_path)
    try:
        bench.send_signal(sig)
        bench.wait(30)
        assert _gone(pids["launcher"]), "the launcher outlived the benchmark"
        assert _gone(pids["server"]), "the server (own session, ignores SIGTERM) outlived the benchmark"
    finally:
        for p in pids.values():
            if psutil.pid_exists(p):
                os.kill(p, signal.SIGKILL)


def test_an_orphaned_server_is_still_found(tmp_path):
    """The launcher dies first (SIGKILL): its server is re-parented to the benchmark (child
    subreaper), so stopping the benchmark still stops the server."""
    bench, pids = _start(tmp_path)
    try:
        os.kill(pids["launcher"], signal.SIGKILL)
        time.sleep(0.5)
        assert psutil.Process(pids["server"]).ppid() == bench.pid
        bench.send_signal(signal.SIGTERM)
        bench.wait(30)
        assert _gone(pids["server"]), "the orphaned server outlived the benchmark"
    finally:
        if psutil.pid_exists(pids["server"]):
            os.kill(pids["server"], signal.SIGKILL)
