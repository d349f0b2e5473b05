"""Job submission against the spec's cluster, through Ray's JobSubmissionClient.

`submit` validates the job, runs the preflight against the spec, stages the resolved
config and the resolved cluster spec in a small working dir, and submits
``python -m rayworks.jobmain <kind> --config rayworks_job.yaml`` with the spec's runtime
env plus the job's own. The package travels as a ``py_modules`` entry, so nothing from a
checkout (``jobs/``, ``cluster/``) is needed: an installed rayworks submits the same way.
Secret env vars travel sealed (:mod:`rayworks.secrets`). Auth needs no thought: the
client gets RAY_AUTH_MODE=token and Ray's token file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from rayworks.cluster.auth import apply_auth_env
from rayworks.config.cluster import ClusterSpec, load_cluster_spec
from rayworks.config.jobs import JobBase, dump_job, load_job
from rayworks.errors import ClusterError, ConfigError, JobFailedError
from rayworks.client.preflight import preflight
from rayworks.secrets import sealed_runtime_env

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the rayworks package, shipped to every job
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
JOB_FILE = "rayworks_job.yaml"
SPEC_FILE = "rayworks_cluster.yaml"


def client(spec: ClusterSpec | None = None, address: str | None = None):
    """A JobSubmissionClient for the spec's dashboard (or an explicit address), authenticated."""
    apply_auth_env(spec)
    from ray.job_submission import JobSubmissionClient

    url = address or (spec.dashboard_url if spec else None)
    if not url:
        raise ConfigError("no cluster: give --cluster SPEC or --address http://HOST:8265")
    if spec is None or spec.auth.mode == "token":
        from rayworks.cluster.auth import verify_url

        # JobSubmissionClient sends the token on its first request: check the listener first, for
        # any URL (an explicit --address too). On loopback that includes the socket's owner.
        verify_url(url, cached=True)
    try:
        return JobSubmissionClient(url)
    except Exception as exc:  # Ray raises ConnectionError/RuntimeError/AuthenticationError here
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "auth" in msg.lower() or "401" in msg or "403" in msg or "token" in msg.lower():
            raise ClusterError(f"the cluster at {url} refused the auth token ({msg[:200]}); use the cluster's "
                               "token: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token") from None
        raise ClusterError(f"cannot reach the Ray cluster at {url}: {msg[:200]}. Is it running "
                           "(`rayworks up`, `rayworks status`)?") from None


def stage(job: JobBase, spec: ClusterSpec) -> Path:
    """A working dir for the job: the resolved config and the resolved spec it was submitted with.

    The job's copy of the package has neither the client's spec file nor a checkout, so
    the spec travels with the job (storage already absolute) and the staged config names
    it by a path relative to itself. Secrets are names only here; values travel sealed.
    """
    d = Path(tempfile.mkdtemp(prefix=f"rayworks-{job.name}-"))
    (d / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    staged = job.model_copy(deep=True)
    staged.cluster = SPEC_FILE
    dump_job(staged, d / JOB_FILE)
    return d


def runtime_env(job: JobBase, spec: ClusterSpec, working_dir: Path) -> dict:
    """The spec's runtime env plus the job's own; secrets come from this shell's environment, sealed."""
    env_vars = {**spec.runtime_env.env_vars, **job.runtime_env.env_vars}
    sealed = sealed_runtime_env(spec.runtime_env.secret_env_vars)
    env_vars.update(sealed.get("env_vars", {}))
    env = {"working_dir": str(working_dir), "py_modules": [str(PACKAGE_DIR)], "env_vars": env_vars}
    if "worker_process_setup_hook" in sealed:
        env["worker_process_setup_hook"] = sealed["worker_process_setup_hook"]
    pip = list(job.runtime_env.pip)
    if pip:
        env["pip"] = pip
    return env


def entrypoint(job: JobBase) -> str:
    """The job's command: the package's own entrypoint module (no jobs/ folder needed)."""
    return f"python -m rayworks.jobmain {job.kind} --config {JOB_FILE}"


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
               wait: bool = True, timeout_s: float | None = None, quiet: bool = False,
               env_vars: dict[str, str] | None = None) -> str:
    """Submits an already-validated job (used by `submit` and the pipeline).

    ``env_vars``: non-secret additions to the job's runtime env that are not part of its config
    (the pipeline's MLflow parent run, rayworks.tracking.pipeline).
    """
    c = client(spec, address)
    wd = stage(job, spec)
    entry = entrypoint(job)
    sub_id = f"rayworks-{job.kind}-{job.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
    rt = runtime_env(job, spec, wd)
    rt["env_vars"].update(env_vars or {})
    try:
        job_id = c.submit_job(entrypoint=entry, runtime_env=rt, submission_id=sub_id,
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

