"""Runs a pipeline: corpus -> prep -> train [-> embed -> index -> eval] -> serve as Ray jobs, then one completion.

Used by `rayworks run` (from this machine) and by `jobs/pipeline.py` (as one Ray job).
A stage is skipped when its record says it ran with the identical resolved config and
the identical upstream manifest, and its output manifest is still there unchanged.
"""

from __future__ import annotations

import json
import os
import time

from rayworks.config.base import config_hash
from rayworks.config.cluster import ClusterSpec
from rayworks.config.pipeline import OPTIONAL_STAGES, STAGES, PipelineJob
from rayworks.errors import JobFailedError
from rayworks.storage import is_file, read_bytes, sha256_bytes, write_bytes


def _say(msg: str) -> None:
    print(f"[rayworks] {msg}", flush=True)


def stage_outputs(stage: str, job, spec: ClusterSpec) -> dict[str, str]:
    """Where a stage's manifest (and, for train, the export) lands."""
    out = job.artifact_uri(spec)
    links = {"output": out, "manifest": f"{out}/manifest.json"}
    if stage == "train":
        links.update(export_dir=f"{out}/export", export_manifest=f"{out}/export/manifest.json")
    return links


def record_uri(job: PipelineJob, spec: ClusterSpec, stage: str) -> str:
    return f"{spec.storage.uri.rstrip('/')}/pipeline/{job.name}/stages/{stage}.json"


def stage_upstream(stage: str, job, links: dict[str, str], chain_sha: str, produced: dict[str, str]) -> str:
    """The upstream part of a stage's up-to-date key: the sha256 of the manifests it reads.

    prep, train, eval and serve follow the main chain (prep's manifest, then the training
    export's). embed reads the export only when it embeds with it (its own model is in its
    config); index reads the embed output; a serve stage with an index also reads the index,
    so a rebuilt index is redeployed while an untouched one is not.
    """
    if stage == "embed":
        from pathlib import Path

        from rayworks.config.jobs import resolve_path

        linked = "export_dir" in links and job.model == resolve_path(links["export_dir"], Path.cwd())
        return produced.get("export", "") if linked else ""
    if stage == "index":
        return produced.get("embed", "")
    if stage == "serve" and "index" in produced:
        return f"{chain_sha}+index:{produced['index']}"
    return chain_sha


def _up_to_date(rec_uri: str, key: str, manifest_uri: str) -> dict | None:
    if not is_file(rec_uri) or not is_file(manifest_uri):
        return None
    rec = json.loads(read_bytes(rec_uri))
    man = read_bytes(manifest_uri)
    if rec.get("key") != key or sha256_bytes(man) != rec.get("manifest_sha256"):
        return None
    return rec


def serve_endpoint(job, spec: ClusterSpec) -> tuple[str, str | None, str | None]:
    """(base URL of the API, the key's env var name, one key) for a serve job."""
    host = job.http.host or spec.serve.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    port = job.http.port or spec.serve.port
    base = f"http://{host}:{port}{job.http.route_prefix.rstrip('/')}"
    key = None
    if job.auth.api_keys_env:
        key = (os.environ.get(job.auth.api_keys_env) or "").split(",")[0].strip() or None
    elif job.auth.api_keys_file and os.path.isfile(job.auth.api_keys_file):
        lines = [ln.strip() for ln in open(job.auth.api_keys_file) if ln.strip()]
        key = lines[0] if lines else None
    return base, job.auth.api_keys_env, key


def ensure_api_key(job) -> None:
    """Local clusters only: create the serve job's key file (0600) if it does not exist yet."""
    path = job.auth.api_keys_file
    if not path or os.path.exists(path):
        return
    from rayworks.client.serve_cli import write_api_key

    write_api_key(path)
    _say(f"serve: wrote a new API key to {path} (mode 0600)")


def _healthy(job, spec: ClusterSpec) -> bool:
    import requests

    base, _, key = serve_endpoint(job, spec)
    try:
        r = requests.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=5)
        return r.status_code == 200 and any(m["id"] == job.models[0].id for m in r.json().get("data", []))
    except Exception:  # noqa: BLE001 - any failure means "redeploy"
        return False


def smoke_test(job, spec: ClusterSpec, pipe: PipelineJob) -> str:
    """Sends one real completion over HTTP and returns its text."""
    import requests

    base, _, key = serve_endpoint(job, spec)
    body = {"model": job.models[0].id, "prompt": pipe.smoke_test.prompt,
            "max_tokens": pipe.smoke_test.max_tokens, "temperature": 0}
    deadline = time.time() + pipe.smoke_test.timeout_s
    last = None
    while time.time() < deadline:
        try:
            r = requests.post(f"{base}/v1/completions", json=body, timeout=60,
                              headers={"Authorization": f"Bearer {key}"} if key else {})
            if r.status_code == 200:
                return r.json()["choices"][0]["text"]
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(2)
    raise JobFailedError(f"the served model did not answer the smoke-test completion at {base}: {last}")


def serving_links(pipe: PipelineJob, spec: ClusterSpec, links: dict[str, str]) -> dict[str, str]:
    """The eval stage's baseline: the serve stage's model now serving, when its files are still the ones
    deployed (else the gate falls back on the scores recorded when it was promoted)."""
    if pipe.serve is None:
        return {}
    from rayworks.eval.promote import serving_model

    serve = pipe.stage_job("serve", links)
    now = serving_model(spec.storage.uri, serve.name, serve.models[0].id)
    if now is None:
        _say("eval: no model is serving yet; the loss rule has nothing to compare with")
        return {}
    if not now.unchanged:
        _say(f"eval: the serving model's files at {now.source} were replaced since it was deployed; "
             "comparing with its scores recorded at promotion")
        return {}
    _say(f"eval: comparing the new model with the one serving ({now.source})")
    return {"serving_source": now.source}


def eval_gate(job, pipe: PipelineJob, spec: ClusterSpec, out: str) -> dict:
    """Applies the eval stage's gate; raises GateFailedError (nothing deployed) with both scores side by side."""
    from rayworks.eval.job import read_results
    from rayworks.eval.promote import decide

    results = read_results(out)
    verdict = decide(job.gate, results, spec.storage.uri, pipe.name, f"the new model {job.model}")
    if verdict.checks:
        _say("eval: promotion gate passed\n" + verdict.table())
    return results


def build_corpus(pipe: PipelineJob) -> None:
    from pathlib import Path

    c = pipe.corpus
    if c is None:
        return
    out = Path(c.output)
    if out.is_dir() and any(out.iterdir()):
        _say(f"corpus: {out} already built, skipped")
        return
    from rayworks.data.corpus import build_python_docs

    _say(f"corpus: building {c.source} into {out}")
    build_python_docs(out, size_mb=c.size_mb)


def run(pipe: PipelineJob, address: str | None = None, bring_up: bool = False, follow: bool = True) -> dict:
    """Runs the pipeline; returns a summary (stage -> ran/skipped, outputs, smoke-test text)."""
    from rayworks.client.preflight import check_config

    spec = pipe.cluster_spec()
    # Every stage's config (with the links filled in) must be valid before the first one runs.
    check_config(pipe, spec)
    if bring_up and spec.provider.type == "local" and address is None:
        from rayworks.cluster import local

        was_down = local.probe(spec) == "down"
        local.up(spec)
        if was_down:  # started here, as `rayworks up` would: MLflow beside it (a running cluster has its own)
            from rayworks.client.tracking_cli import up_with_cluster

            up_with_cluster(spec)
    build_corpus(pipe)
    from rayworks.tracking import tracking_uri
    from rayworks.tracking.pipeline import PipelineRun

    # The parent MLflow run, opened first: each stage job's own run is nested under it (its id
    # travels in the job's runtime env); a skipped stage gets a nested run linking its output's maker.
    mlrun = PipelineRun(spec, pipe.name)
    summary: dict = {"stages": {}, "dashboard_url": address or spec.dashboard_url}
    try:
        _run_stages(pipe, spec, address, follow, summary, mlrun)
    except BaseException:
        mlrun.finish(ok=False)
        raise
    summary["mlflow"] = mlrun.finish(tags={"rayworks.api_url": summary.get("api_url", "")})
    summary["mlflow_url"] = tracking_uri(spec)
    print_summary(summary, pipe)
    return summary


def _run_stages(pipe: PipelineJob, spec: ClusterSpec, address: str | None, follow: bool, summary: dict,
                mlrun) -> None:
    """Runs or skips each stage in order, then the smoke test; fills ``summary``."""
    from rayworks.client.submit import submit_job

    links: dict[str, str] = {}
    upstream_sha = ""
    produced: dict[str, str] = {}  # manifests' sha256 of the export, embed and index outputs (stage_upstream)
    jobs = {}
    for stage in STAGES:
        if stage == "serve" and pipe.serve is None:
            break
        if stage in OPTIONAL_STAGES and getattr(pipe, stage) is None:
            continue
        if stage == "eval":
            links.update(serving_links(pipe, spec, links))
        job = pipe.stage_job(stage, links)
        from rayworks.client.preflight import preflight

        if stage == "serve" and spec.provider.type == "local":
            ensure_api_key(job)
        preflight(job, spec)
        jobs[stage] = job
        outs = stage_outputs(stage, job, spec)
        key = config_hash({"config": job.model_dump(mode="json"),
                           "upstream_sha256": stage_upstream(stage, job, links, upstream_sha, produced)})
        rec_uri = record_uri(pipe, spec, stage)
        rec = None if stage in pipe.force else _up_to_date(rec_uri, key, outs["manifest"])
        if rec and stage == "serve" and not _healthy(job, spec):
            rec = None
        if rec:
            _say(f"{stage}: skipped, up to date (same config and inputs; output {outs['output']})")
            status = "skipped"
        else:
            _say(f"{stage}: submitting job {job.name!r}")
            t0 = time.time()
            job_id = submit_job(job, spec, address=address, follow=follow, wait=True, timeout_s=pipe.job_timeout_s,
                                env_vars=mlrun.env(stage))
            if not is_file(outs["manifest"]):
                raise JobFailedError(f"{stage} job {job_id} succeeded but wrote no manifest at {outs['manifest']}")
            man = read_bytes(outs["manifest"])
            rec = {"stage": stage, "key": key, "job_id": job_id, "manifest": outs["manifest"],
                   "manifest_sha256": sha256_bytes(man), "upstream_sha256": upstream_sha,
                   "seconds": round(time.time() - t0, 1)}
            write_bytes(rec_uri, json.dumps(rec, indent=2, sort_keys=True).encode())
            _say(f"{stage}: done in {rec['seconds']:.0f}s -> {outs['output']}")
            status = "ran"
        summary["stages"][stage] = {"status": status, **outs, "manifest_sha256": rec["manifest_sha256"],
                                    "job_id": rec.get("job_id"), "seconds": rec.get("seconds") if status == "ran" else None}
        mlrun.stage(stage, summary["stages"][stage])
        if stage == "eval":
            summary["eval_results"] = eval_gate(job, pipe, spec, outs["output"])
        if stage == "prep":
            links["prep_output"] = outs["output"]
            upstream_sha = rec["manifest_sha256"]
        elif stage == "train":
            links["export_dir"] = outs["export_dir"]
            exp = outs["export_manifest"]
            upstream_sha = sha256_bytes(read_bytes(exp)) if is_file(exp) else rec["manifest_sha256"]
            produced["export"] = upstream_sha
        elif stage in ("embed", "index"):  # read by the index and serve stages (config.pipeline.link_retrieval)
            links[f"{stage}_output"] = outs["output"]
            produced[stage] = rec["manifest_sha256"]
    if "serve" in jobs and "eval_results" in summary:  # the promoted model is the one serving now
        from rayworks.eval.promote import record_serving

        record_serving(spec.storage.uri, pipe.name, summary["eval_results"])
    if "serve" in jobs:
        base, key_env, _ = serve_endpoint(jobs["serve"], spec)
        summary["api_url"] = f"{base}/v1"
        summary["model_id"] = jobs["serve"].models[0].id
        summary["key_env"] = key_env
        summary["key_file"] = jobs["serve"].auth.api_keys_file
        if pipe.smoke_test.enabled:
            summary["smoke_text"] = smoke_test(jobs["serve"], spec, pipe)


def print_summary(s: dict, pipe: PipelineJob) -> None:
    print("", flush=True)
    _say(f"pipeline {pipe.name!r} finished")
    for stage, info in s["stages"].items():
        print(f"  {stage:<6} {info['status']:<8} {info['output']}")
    print(f"  dashboard: {s['dashboard_url']}")
    if s.get("mlflow_url"):  # the MLflow UI, with this pipeline run's parent run when it was logged
        run = (s.get("mlflow") or {}).get("run_id")
        print(f"  MLflow:    {s['mlflow_url']}" + (f"   (pipeline run {run})" if run else "   (not reachable)"))
    if "api_url" not in s:
        return
    # Point at where the key lives; never print the key itself.
    if s.get("key_env"):
        key, py_key = f"${s['key_env']}", f"os.environ['{s['key_env']}']"
    elif s.get("key_file"):
        short = s["key_file"].replace(os.path.expanduser("~"), "~", 1)
        key, py_key = f"$(head -1 {short})", f"open(os.path.expanduser('{short}')).readline().strip()"
    else:
        key, py_key = "<your key>", "'none'"
    print(f"  API:       {s['api_url']}   (model {s['model_id']!r})")
    if "smoke_text" in s:
        print(f"  smoke test: {pipe.smoke_test.prompt!r} -> {s['smoke_text']!r}")
    print("\n  try it:")
    print(f"    curl {s['api_url']}/completions -H \"Authorization: Bearer {key}\" -H 'Content-Type: application/json' \\")
    print(f"      -d '{{\"model\": \"{s['model_id']}\", \"prompt\": \"def \", \"max_tokens\": 32}}'")
    print(f"    python -c \"import os, openai; c = openai.OpenAI(base_url='{s['api_url']}', api_key={py_key}); "
          f"print(c.completions.create(model='{s['model_id']}', prompt='def ', max_tokens=32).choices[0].text)\"")
