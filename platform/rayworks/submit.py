"""Job submission against the spec's cluster, through Ray's JobSubmissionClient.

`submit` validates the job, runs the preflight against the spec, stages the
resolved config beside the job entrypoints, and submits
``python jobs/<kind>.py --config rayworks_job.yaml`` with the spec's runtime env
plus the job's own. Auth needs no thought: the client gets RAY_AUTH_MODE=token
and Ray's token file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rayworks.cluster.auth import apply_auth_env
from rayworks.config.cluster import ClusterSpec, load_cluster_spec
from rayworks.config.jobs import KINDS, JobBase, dump_job, load_job
from rayworks.errors import ClusterError, ConfigError, JobFailedError
from rayworks.preflight import preflight

PACKAGE_DIR = Path(__file__).resolve().parent
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def project_root() -> Path:
    """The checkout holding jobs/ (the package lives in <root>/platform/rayworks)."""
    root = PACKAGE_DIR.parents[1]
    if not (root / "jobs").is_dir() and (Path.cwd() / "jobs").is_dir():
        root = Path.cwd()  # inside a Ray job (e.g. the pipeline job): its working dir holds jobs/
    if not (root / "jobs").is_dir():
        raise ConfigError(f"cannot find the jobs/ folder next to the rayworks package ({root}); "
                          "submit from a rayworks checkout (pip install -e .)")
    return root


def client(spec: ClusterSpec | None = None, address: str | None = None):
    """A JobSubmissionClient for the spec's dashboard (or an explicit address), authenticated."""
    apply_auth_env(spec)
    from ray.job_submission import JobSubmissionClient

    url = address or (spec.dashboard_url if spec else None)
    if not url:
        raise ConfigError("no cluster: give --cluster SPEC or --address http://HOST:8265")
    try:
        return JobSubmissionClient(url)
    except Exception as exc:  # Ray raises ConnectionError/RuntimeError/AuthenticationError here
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "auth" in msg.lower() or "401" in msg or "403" in msg or "token" in msg.lower():
            raise ClusterError(f"the cluster at {url} refused the auth token ({msg[:200]}); use the cluster's "
                               "token: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token") from None
        raise ClusterError(f"cannot reach the Ray cluster at {url}: {msg[:200]}. Is it running "
                           "(`rayworks up`, `rayworks status`)?") from None


def stage(job: JobBase) -> Path:
    """A working dir for the job: the jobs/ entrypoints plus the resolved config."""
    d = Path(tempfile.mkdtemp(prefix=f"rayworks-{job.name}-"))
    shutil.copytree(project_root() / "jobs", d / "jobs",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dump_job(job, d / "rayworks_job.yaml")
    return d


def runtime_env(job: JobBase, spec: ClusterSpec, working_dir: Path) -> dict:
    """The spec's runtime env plus the job's own; secrets come from this shell's environment."""
    env_vars = {**spec.runtime_env.env_vars, **job.runtime_env.env_vars}
    missing = [n for n in spec.runtime_env.secret_env_vars if n not in os.environ]
    if missing:
        raise ConfigError(f"runtime_env.secret_env_vars names {missing} but they are not set in this shell; "
                          "export them before submitting")
    env_vars.update({n: os.environ[n] for n in spec.runtime_env.secret_env_vars})
    env = {"working_dir": str(working_dir), "py_modules": [str(PACKAGE_DIR)], "env_vars": env_vars}
    pip = list(job.runtime_env.pip)
    if pip:
        env["pip"] = pip
    return env


def submit(job_path: str, cluster: str | None = None, address: str | None = None,
           overrides: list[str] | None = None, follow: bool = False, wait: bool = True,
           timeout_s: float | None = None) -> str:
    """Validates, preflights and submits a job; returns its id. Raises JobFailedError if it fails."""
    job = load_job(job_path, overrides)
    if cluster:
        job.cluster = str(Path(cluster).resolve())
    spec = load_cluster_spec(job.cluster)
    preflight(job, spec)
    return submit_job(job, spec, address=address, follow=follow, wait=wait, timeout_s=timeout_s)


def submit_job(job: JobBase, spec: ClusterSpec, address: str | None = None, follow: bool = False,
               wait: bool = True, timeout_s: float | None = None, quiet: bool = False) -> str:
    """Submits an already-validated job (used by `submit` and the pipeline)."""
    c = client(spec, address)
    wd = stage(job)
    entry = f"python {KINDS[job.kind][2]} --config rayworks_job.yaml"
    sub_id = f"rayworks-{job.kind}-{job.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    try:
        job_id = c.submit_job(entrypoint=entry, runtime_env=runtime_env(job, spec, wd), submission_id=sub_id,
                              metadata={"rayworks_kind": job.kind, "rayworks_name": job.name})
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    url = address or spec.dashboard_url
    if not quiet:
        print(f"submitted {job.kind} job {job_id}")
        print(f"  dashboard: {url}/#/jobs/{job_id}")
        print(f"  logs:      rayworks logs {job_id} --follow")
    if wait or follow:
        wait_for(c, job_id, follow=follow, timeout_s=timeout_s, quiet=quiet)
    return job_id


def wait_for(c, job_id: str, follow: bool = False, timeout_s: float | None = None, quiet: bool = False) -> str:
    """Waits for a terminal status (streaming logs if follow); raises JobFailedError unless SUCCEEDED."""
    if follow:
        async def _tail():
            async for chunk in c.tail_job_logs(job_id):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        asyncio.run(_tail())
    deadline = time.time() + timeout_s if timeout_s else None
    last = None
    while True:
        st = str(c.get_job_status(job_id)).split(".")[-1]
        if st != last and not quiet and not follow:
            print(f"  {job_id}: {st}")
            last = st
        if st in TERMINAL:
            break
        if deadline and time.time() > deadline:
            raise JobFailedError(f"job {job_id} still {st} after {timeout_s:.0f}s; `rayworks stop {job_id}` to stop it")
        time.sleep(1.0)
    if st != "SUCCEEDED":
        info = c.get_job_info(job_id)
        tail = "\n".join(c.get_job_logs(job_id).splitlines()[-25:])
        raise JobFailedError(f"job {job_id} {st}: {info.message or ''}\n--- last log lines ---\n{tail}")
    return st


def resolve_cluster(cluster: str | None) -> ClusterSpec:
    return load_cluster_spec(cluster)
