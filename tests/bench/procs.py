"""Benchmarks leave nothing running: on success, on failure and on Ctrl-C.

A benchmark starts servers (vLLM's own OpenAI server), child benchmark processes and Ray
instances. A server that outlives its benchmark keeps its CPUs and port and skews every
later measurement, so every process a benchmark starts goes through :func:`owned`:

- it starts in its own session (a Ctrl-C at the terminal reaches only the benchmark, which
  then tears the tree down in order instead of racing its children);
- on exit, whatever the reason, the whole tree is stopped: every descendant found by walking
  the process table (a child that started its own session, as vLLM's engine core and Ray's
  raylet do, is still a descendant) gets SIGTERM, then SIGKILL after a grace period;
- :func:`install` makes the benchmark a child subreaper (a process orphaned by a crashed
  intermediate, e.g. vLLM's server after its launcher died, is re-parented to the benchmark
  and so is still found and stopped) and turns SIGTERM and SIGHUP into SystemExit, so
  ``finally`` blocks (and :func:`owned`'s cleanup) run when a benchmark is killed politely too.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

GRACE_S = 20.0


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (children first found, deepest last)."""
    import psutil

    try:
        root = psutil.Process(pid)
        return [pid] + [c.pid for c in root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def reap(pids: list[int], grace_s: float = GRACE_S) -> list[int]:
    """SIGTERM to ``pids``, then SIGKILL to those still alive after ``grace_s``; returns the
    pids that needed SIGKILL. The list is taken before any signal: a process whose parent
    dies is re-parented and would no longer show up in a walk from the root."""
    import psutil

    procs = []
    for p in pids:
        try:
            procs.append(psutil.Process(p))
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in alive]


@contextmanager
def owned(cmd: list[str], grace_s: float = GRACE_S, **popen_kw) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(cmd)`` whose whole process tree is gone when the block exits."""
    before = set(tree(os.getpid()))
    proc = subprocess.Popen(cmd, start_new_session=True, **popen_kw)
    try:
        yield proc
    finally:
        # proc's tree, plus whatever was orphaned into ours meanwhile (we are the subreaper): a
        # server whose launcher died is no longer below the launcher.
        mine = [p for p in tree(os.getpid()) if p not in before]
        killed = reap(sorted(set(tree(proc.pid)) | set(mine)), grace_s)
        if killed:
            print(f"[bench] SIGKILLed {len(killed)} process(es) of {cmd[:3]} that ignored SIGTERM", flush=True)
        proc.wait()


def run_owned(cmd: list[str], timeout_s: float | None = None, **popen_kw) -> subprocess.CompletedProcess:
    """Like ``subprocess.run(cmd, capture_output=True, text=True)`` through :func:`owned`."""
    with owned(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kw) as proc:
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            out, err = "", f"timed out after {timeout_s}s"
            return subprocess.CompletedProcess(cmd, 124, out, err)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


PR_SET_CHILD_SUBREAPER = 36


def install() -> None:
    """Subreaper (Linux) + SIGTERM/SIGHUP -> SystemExit in the main thread. Call once in main()."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def _raise(signum, _frame):
        raise SystemExit(128 + signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _raise)
    # Ctrl-C raises KeyboardInterrupt even where the benchmark was started with SIGINT ignored
    # (a background job of a non-interactive shell gets SIG_IGN, and Python then keeps it).
    signal.signal(signal.SIGINT, signal.default_int_handler)


def leftovers(since_pids: set[int]) -> list[str]:
    """Command lines of this process's descendants not in ``since_pids`` (for a final check)."""
    import psutil

    out = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        if p.pid not in since_pids:
            try:
                out.append(" ".join(p.cmdline())[:120])
            except psutil.NoSuchProcess:
                pass
    return out


if __name__ == "__main__":  # a tiny self-check: python tests/bench/procs.py
    with owned([sys.executable, "-c", "import time; time.sleep(60)"]) as p:
        time.sleep(0.5)
    print("reaped" if not tree(p.pid) else "LEFT RUNNING")


def env_pairs(ap, items: list[str]) -> dict[str, str]:
    """``--baseline-env KEY=VALUE`` items as a dict; a malformed one is an argparse error."""
    bad = [kv for kv in items if "=" not in kv]
    if bad:
        ap.error(f"--baseline-env {bad[0]!r}: give KEY=VALUE")
    return dict(kv.split("=", 1) for kv in items)
