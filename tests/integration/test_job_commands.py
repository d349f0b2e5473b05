"""README's job commands against the session cluster, for a job that fails or never ends.

`rayworks submit --follow` exits non-zero when the job fails at run time (after the
preflight passed: a corrupt input file the prep job is told to fail on);
`rayworks logs ID --follow` streams a running job's output as it comes;
`rayworks stop ID` stops a running job for real.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TICKER = "import time; [print('tick', i, flush=True) or time.sleep(0.5) for i in range(100000)]"


def _status(c, job_id: str) -> str:
    return str(c.get_job_status(job_id)).split(".")[-1]


def test_submit_follow_exits_nonzero_when_the_job_fails_at_run_time(local_cluster, tmp_path):
    from rayworks.client.submit import client

    good, bad = tmp_path / "good.jsonl", tmp_path / "broken.jsonl"
    good.write_text("".join(json.dumps({"text": f"document number {i} " * 8}) + "\n" for i in range(50)))
    bad.write_text('{"text": "fine"}\n{not json\n')
    job = {"kind": "prep", "name": "fails-at-run-time", "cluster": str(local_cluster.spec_path),
           "inputs": [{"path": str(good), "format": "jsonl"}, {"path": str(bad), "format": "jsonl"}],
           "on_bad_file": "fail", "tokenizer": {"vocab_size": 300, "sample_mb": 0.1}, "seq_len": 32,
           "output_uri": str(tmp_path / "out")}
    (tmp_path / "prep.yaml").write_text(yaml.safe_dump(job))
    proc = local_cluster.rayworks("submit", str(tmp_path / "prep.yaml"), "--follow", timeout=600)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = re.search(r"submitted prep job (\S+)", proc.stdout).group(1)  # it passed the preflight
    assert f"job {job_id} FAILED" in proc.stderr and "broken.jsonl" in proc.stderr, proc.stderr[-3000:]
    assert _status(client(local_cluster.spec), job_id) == "FAILED"
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_logs_follow_streams_and_stop_stops(local_cluster):
    from rayworks.client.submit import client

    c = client(local_cluster.spec)
    job_id = c.submit_job(entrypoint=f'python -c "{TICKER}"')
    follow = subprocess.Popen([str(Path(sys.executable).with_name("rayworks")), "logs", job_id, "--follow",
                               "--cluster", str(local_cluster.spec_path)], cwd=REPO,
                              env={**os.environ, **local_cluster.env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in follow.stdout], daemon=True).start()
    try:
        seen, deadline = [], time.time() + 180
        while not any(ln.startswith("tick 3") for ln in seen):
            assert time.time() < deadline and follow.poll() is None, (seen, follow.poll())
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        # Streamed: the lines arrived while the job was still running.
        assert _status(c, job_id) == "RUNNING"
        stop = local_cluster.rayworks("stop", job_id, "--cluster", str(local_cluster.spec_path), timeout=120)
        assert stop.returncode == 0 and f"stop requested for {job_id}" in stop.stdout, stop.stdout + stop.stderr
        deadline = time.time() + 120
        while _status(c, job_id) != "STOPPED":
            assert time.time() < deadline, _status(c, job_id)
            time.sleep(0.5)
        # The follower ends with the job, and says how it ended.
        _, err = follow.communicate(timeout=120)
        assert follow.returncode == 1 and f"job {job_id} STOPPED" in err, err[-2000:]
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    again = local_cluster.rayworks("stop", job_id, "--cluster", str(local_cluster.spec_path), timeout=120)
    assert again.returncode == 0 and f"{job_id} is not running" in again.stdout
