"""Searching where Ray and rayworks write for a secret's value (tests of "no secret is ever written")."""

from __future__ import annotations

import os
from pathlib import Path


def files_holding(root: Path, needle: bytes) -> list[str]:
    """Every regular file under ``root`` whose bytes contain ``needle``."""
    hits = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath) / n
            try:
                if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                    hits.append(str(p))
            except OSError:
                continue
    return hits


def jobs_api_answers(cluster) -> list[str]:
    """Every Jobs API answer about every job on ``cluster`` (list, info, logs), as text."""
    import requests

    from rayworks.client.submit import client
    from rayworks.cluster.auth import bearer_header

    c = client(cluster.spec)
    hdr = bearer_header(cluster.spec)
    answers = [requests.get(f"{cluster.dashboard_url}/api/jobs/", headers=hdr, timeout=30).text]
    for j in c.list_jobs():
        if not j.submission_id:
            continue
        answers.append(requests.get(f"{cluster.dashboard_url}/api/jobs/{j.submission_id}", headers=hdr, timeout=30).text)
        answers.append(repr(c.get_job_info(j.submission_id)))
        answers.append(c.get_job_logs(j.submission_id))
    return answers
