"""`rayworks serve update`: roll a served model onto new weights without dropping requests.

The update is the serve job again, with one model's source replaced: the config comes
from the last deploy's manifest, is re-validated and preflighted, and is submitted as
a new serve job. Serve then replaces the model's replicas: with
``rollout.max_surge_percent`` > 0 it starts the new ones first and stops the old
ones only once the new ones are healthy, draining their in-flight requests.
"""

from __future__ import annotations

from pathlib import Path

from rayworks.config.engine import upgrade_renamed
from rayworks.config.jobs import load_job_data
from rayworks.config.serve import ServeJob
from rayworks.errors import ConfigError
from rayworks.serve import manifest as mf


def pick_name(storage_uri: str, name: str | None) -> str:
    """The serve job to update: the one given, or the only one deployed."""
    if name:
        return name
    names = mf.list_names(storage_uri)
    if len(names) == 1:
        return names[0]
    if not names:
        raise ConfigError(f"no serve job has been deployed under {storage_uri}/serve; deploy one first "
                          "(`rayworks submit jobs/configs/serve.yaml`)")
    raise ConfigError(f"several serve jobs are deployed ({', '.join(names)}); say which with --name")


def updated_job(manifest: dict, model_id: str | None, source: str | None, index: str | None = None) -> ServeJob:
    """The deployed job's config with ``model_id``'s source and/or the attached index replaced (validated)."""
    data = dict(manifest["config"])
    ids = [m["id"] for m in data["models"]]
    if model_id is not None and model_id not in ids:
        raise ConfigError(f"serve job {data['name']!r} serves no model {model_id!r}; models: {ids}")
    if source is not None:
        src = source if "://" in source else str(Path(source).expanduser().resolve())
        data["models"] = [{**m, "source": src} if m["id"] == model_id else m for m in data["models"]]
    if index is not None:  # a new index rolls out like new weights: its Retriever replicas are replaced
        if not data.get("retrieval"):
            raise ConfigError(f"serve job {data['name']!r} has no index attached; add a 'retrieval:' block to its "
                              "config and submit it, then update its index")
        idx = index if "://" in index else str(Path(index).expanduser().resolve())
        data["retrieval"] = {**data["retrieval"], "index": idx}
    # A manifest from before the engine settings took vLLM's names still updates.
    data["models"] = [{**m, "engine": upgrade_renamed(m["engine"])} if m.get("engine") else m for m in data["models"]]
    job = load_job_data(data, f"manifest of serve job {data['name']!r}", Path.cwd(), expect_kind="serve")
    assert isinstance(job, ServeJob)
    return job


def gate_check(gate: str, model_id: str, source: str, spec, job_name: str, timeout_s: float | None = None) -> None:
    """Runs the eval job ``gate`` on ``source`` beside the model now serving; raises GateFailedError on a fail.

    The eval config's model and compare_to are replaced by the new source and the served model.
    """
    from rayworks.client.preflight import preflight
    from rayworks.client.submit import submit_job
    from rayworks.config.jobs import load_job
    from rayworks.eval.job import read_results
    from rayworks.eval.promote import decide, serving_model

    now = serving_model(spec.storage.uri, job_name, model_id)
    sets = [f"model={source}"] + ([f"compare_to={now.source}"] if now and now.unchanged else [])
    ev = load_job(gate, sets, expect_kind="eval")
    print(f"gate: evaluating {source} with {gate}" + (f" beside the served {now.source}" if len(sets) > 1 else ""))
    preflight(ev, spec)
    submit_job(ev, spec, wait=True, timeout_s=timeout_s)
    verdict = decide(ev.gate, read_results(ev.artifact_uri(spec)), spec.storage.uri, None, f"the new model {source}")
    print("gate: passed\n" + verdict.table())


def update(model_id: str | None, source: str | None, cluster: str | None = None, name: str | None = None,
           wait: bool = True, timeout_s: float | None = None, gate: str | None = None,
           index: str | None = None) -> str:
    """Redeploys the serve job with a new source for one model and/or a new index; returns the Ray job id."""
    if (model_id is None) != (source is None) or (source is None and index is None):
        raise ConfigError("say what to update: --model with --source (new weights), and/or --index (a new index)")
    if gate and source is None:
        raise ConfigError("--gate evaluates new weights: it needs --model and --source")
    from rayworks.config.cluster import load_cluster_spec
    from rayworks.client.preflight import preflight
    from rayworks.client.submit import submit_job

    spec = load_cluster_spec(cluster)
    if source is not None and source.startswith("models:/"):
        from rayworks.tracking import registry, tracking_uri

        mv = registry.resolve(tracking_uri(spec), source)  # the export folder, its manifest checked
        print(f"{source} -> {mv['name']} version {mv['version']}: {mv['source']}")
        source = mv["source"]
    job_name = pick_name(spec.storage.uri, name)
    manifest = mf.read(spec.storage.uri, job_name)
    job = updated_job(manifest, model_id, source, index)
    if cluster:
        job.cluster = str(Path(cluster).resolve())
    preflight(job, spec)
    if gate:  # before anything is redeployed: a failing model never replaces the served one
        gate_check(gate, model_id, job.model(model_id).source, spec, job_name, timeout_s)
    if model_id is not None:
        old = next(m["source"] for m in manifest["config"]["models"] if m["id"] == model_id)
        print(f"updating model {model_id!r} of serve job {job_name!r}: {old} -> {job.model(model_id).source}")
    if index is not None:
        print(f"updating the index of serve job {job_name!r}: {manifest['config']['retrieval']['index']} -> "
              f"{job.retrieval.index}")
    return submit_job(job, spec, wait=wait, timeout_s=timeout_s)
