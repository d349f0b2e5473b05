"""The serve job's runner: deploy (or update) the app, wait until healthy, exit.

Runs as a Ray job on the cluster (``jobs/serve.py``). It deploys exactly
``render.app_args(job)`` through ``rayworks.serve.app:build_app`` under the job's
app name; submitting again with a changed source is a rolling update of that app
(old replicas serve until new ones are healthy, see ``rollout.max_surge_percent``).
The app keeps running after the job exits. A manifest at
``{storage}/serve/{name}/manifest.json`` records what was deployed.
"""

from __future__ import annotations

import os
import time

from rayworks import storage
from rayworks.config.serve import ServeJob
from rayworks.errors import ConfigError, RayworksError
from rayworks.serve import manifest as mf
from rayworks.serve import render
from rayworks.serve.gate import key_digests
from rayworks.serve.preflight import check_local_source


class DeployError(RayworksError):
    """The application did not become healthy."""

    exit_code = 1


def _check_on_cluster(job: ServeJob) -> None:
    """What only the cluster side can see: sources on its disk, the key in its env."""
    if job.auth.api_keys_env and not os.environ.get(job.auth.api_keys_env):
        raise ConfigError(
            f"auth.api_keys_env={job.auth.api_keys_env!r} is not set in the job's environment; list it under the "
            "cluster spec's runtime_env.secret_env_vars and export it in the shell you submit from")
    if job.auth.api_keys_file and not os.path.isfile(job.auth.api_keys_file):
        raise ConfigError(f"auth.api_keys_file={job.auth.api_keys_file!r}: no such file on the cluster")
    if not job.cluster_spec().storage.is_remote:
        for m in job.models:
            check_local_source(m)


def _direct_streaming_env(args: dict) -> None:
    """Direct streaming: the engine replica serves HTTP itself (vLLM's app behind our gate).

    The flag must be set before Ray Serve LLM is imported here (it reads it at import).
    """
    os.environ["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING"] = "1"


def _replica_code(args: dict) -> None:
    """Gives the engine and Retriever replicas this job's code (:func:`replica_code_env`)."""
    import ray

    code = replica_code_env(ray.get_runtime_context().runtime_env or {})
    for cfg in args["llm_configs"]:
        cfg.setdefault("runtime_env", {}).update(code)
    if args.get("retrieval"):
        args["retrieval"]["code_env"] = code


def replica_code_env(job_env: dict) -> dict:
    """Where the replicas find rayworks: the job's ``py_modules`` (what `rayworks submit` ships),
    else its ``working_dir`` (a plain ``ray job submit`` of a checkout).

    With ``py_modules``, ``working_dir`` is set to None (none): `rayworks submit`'s working_dir
    holds only the job's staged config, new with every submission, and Serve gives it to every
    deployment that names no working_dir of its own. A changed runtime env is a new actor, so
    each update would restart every replica whatever its version says (rayllm.engine_version).
    """
    if job_env.get("py_modules"):
        return {"py_modules": job_env["py_modules"], "working_dir": None}
    return {"working_dir": job_env["working_dir"]} if job_env.get("working_dir") else {}


def ha_proxy_on() -> bool:
    """Whether this cluster runs Serve's HA proxy: nodes started with RAY_SERVE_ENABLE_HA_PROXY=1.

    A job's driver inherits its node's environment, which is what the Serve controller and
    proxies read when they start.
    """
    return os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1"


def wait_healthy(app_name: str, timeout_s: float) -> dict:
    """Polls Serve until the app is RUNNING; raises DeployError on DEPLOY_FAILED or timeout."""
    from ray import serve

    deadline = time.time() + timeout_s
    last = None
    while True:
        st = serve.status().applications.get(app_name)
        state = str(st.status) if st else "NOT_STARTED"
        if state != last:
            print(f"  app {app_name!r}: {state}", flush=True)
            last = state
        if st and st.status == "RUNNING":
            return {n: str(d.status) for n, d in st.deployments.items()}
        if st and st.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            details = "; ".join(f"{n}: {d.message[-400:]}" for n, d in st.deployments.items() if d.message)
            raise DeployError(f"app {app_name!r} {st.status}: {st.message[-400:] or details}")
        if time.time() > deadline:
            raise DeployError(f"app {app_name!r} not healthy after {timeout_s:.0f}s (last state {state}); "
                              "see the Serve page of the dashboard and the replica logs")
        time.sleep(2.0)


def engine_inputs(job: ServeJob) -> dict[str, dict]:
    """Model id -> the sha256 of what its engine replicas read when they start: the model's export
    manifest (which hashes each file), else, for a local folder without one, each file's path,
    size and mtime; and the API key file. A model with neither (a remote folder rayworks did not
    export) restarts its engines on every update (rayworks.serve.rayllm.engine_version)."""
    keys = storage.sha256_file(job.auth.api_keys_file) if job.auth.api_keys_file else None
    return {i["model"]: {"model_sha256": i["sha256"] or _files_fingerprint(i["source"]), "keys_file_sha256": keys}
            for i in mf.inputs(job) if i["role"] == "model"}


def _files_fingerprint(path: str) -> str | None:
    """sha256 over (relative path, size, mtime) of every file of a local folder; None otherwise."""
    import hashlib

    if storage.is_uri(path) or not os.path.isdir(path):
        return None
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for f in sorted(files):
            st = os.stat(os.path.join(root, f))
            h.update(f"{os.path.relpath(os.path.join(root, f), path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return "files:" + h.hexdigest()


def run(job: ServeJob) -> dict:
    """Deploys the job's app (a rolling update if it exists) and returns the manifest."""
    _check_on_cluster(job)
    spec = job.cluster_spec()
    ha = ha_proxy_on()
    if job.performance.direct_streaming and not ha:
        raise ConfigError("performance.direct_streaming: true, but this cluster's Serve runs without the HA proxy "
                          "(its nodes lack RAY_SERVE_ENABLE_HA_PROXY=1); set serve.ha_proxy: true in the cluster "
                          "spec and restart the cluster, or drop direct_streaming")
    direct = job.direct_streaming(ha)
    args = render.app_args(job, direct)
    if job.auth.api_keys_env:
        # Replicas do not reliably inherit this job's env vars (Serve gives a deployment with a
        # runtime env of its own only the job's working_dir), so the gate gets the keys' sha256
        # digests: never the keys themselves, which would show in Serve's config and logs.
        args["auth"]["api_key_sha256"] = key_digests(os.environ[job.auth.api_keys_env])
    args["engine_inputs"] = engine_inputs(job)
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    if direct:
        _direct_streaming_env(args)
    _replica_code(args)
    from ray import serve

    from rayworks.serve import rayllm
    from rayworks.serve.app import build_app

    host = job.http.host or spec.serve.host
    port = job.http.port or spec.serve.port
    serve.start(proxy_location=render.proxy_location(spec), http_options={"host": host, "port": port})
    existing = job.serve_app_name in serve.status().applications
    print(f"{'updating' if existing else 'deploying'} app {job.serve_app_name!r} "
          f"({'direct streaming from vLLM' if direct else 'Ray Serve LLM ingress'}): "
          + ", ".join(f"{m.id} <- {m.source}" for m in job.models), flush=True)
    app = build_app(args)
    for m, v in rayllm.engine_versions(app).items():  # an update keeps the engines whose version it keeps
        print(f"  engine {m}: version {v or 'none (restarts on every update: no model manifest to hash)'}",
              flush=True)
    t0 = time.time()
    rayllm.run_nonblocking(app, name=job.serve_app_name, route_prefix=job.http.route_prefix)
    deployments = wait_healthy(job.serve_app_name, job.deploy_timeout_s)
    took = time.time() - t0
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}{job.http.route_prefix.rstrip('/')}"
    manifest = mf.build(job, render.serve_app_config(job, spec, direct), url, deployments, took)
    where = mf.write(job, manifest)
    from rayworks.tracking import registry, tracking_uri

    # The registered version of each served export gets the `serving` alias (a rollout moves it); never fails.
    registry.mark_serving(tracking_uri(spec), [m.source for m in job.models])
    print(f"app {job.serve_app_name!r} healthy in {took:.0f}s", flush=True)
    print(f"  OpenAI API: {url}/v1  (models: {', '.join(m.id for m in job.models)})", flush=True)
    print(f"  health:     {url}/health", flush=True)
    print(f"  manifest:   {where}", flush=True)
    return manifest
