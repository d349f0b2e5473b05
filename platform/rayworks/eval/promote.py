"""What the promotion gate compares with: the model a serve job now serves, and its recorded scores.

Used on the client by the pipeline's ``eval`` stage and by ``rayworks serve update --gate``:

* :func:`serving_model` reads the serve job's manifest (``{storage}/serve/{name}/manifest.json``):
  the model's source and the sha256 its export manifest had when it was deployed. When the files
  at that source are still those (a new training run wrote elsewhere), the eval job scores them
  again beside the candidate (``compare_to``): same data, same code, side by side.
* When they were replaced (the same training output retrained in place), the scores recorded at
  the last promotion (:func:`record_serving`, ``{storage}/pipeline/{name}/serving_eval.json``)
  stand in, but only on identical data (rayworks.eval.gate.with_recorded_baseline).
"""

from __future__ import annotations

from dataclasses import dataclass

from rayworks import artifacts, storage
from rayworks.config.jobs import default_artifact_uri
from rayworks.eval import gate


@dataclass(frozen=True)
class Serving:
    """The model a serve job serves now."""

    source: str
    deployed_sha256: str | None  # its export manifest's sha256 at deploy time
    unchanged: bool              # the files at ``source`` are still the ones deployed


def serving_model(storage_uri: str, serve_name: str, model_id: str) -> Serving | None:
    """The served model ``model_id`` of serve job ``serve_name``, or None when nothing is deployed."""
    path = storage.join(default_artifact_uri(storage_uri, "serve", serve_name), artifacts.MANIFEST)
    if not storage.is_file(path):
        return None
    m = storage.read_json(path)
    ref = next((i for i in m.get("inputs") or [] if i.get("role") == "model" and i.get("model") == model_id), None)
    if ref is None:
        src = next((x["source"] for x in (m.get("config") or {}).get("models", []) if x.get("id") == model_id), None)
        return Serving(src, None, False) if src else None
    now = artifacts.find_manifest(ref["source"]) if storage.exists(ref["source"]) else None
    same = bool(now and ref.get("sha256") and storage.sha256_file(now) == ref["sha256"])
    return Serving(ref["source"], ref.get("sha256"), same)


def recorded_uri(storage_uri: str, pipeline_name: str) -> str:
    return f"{storage_uri.rstrip('/')}/pipeline/{pipeline_name}/serving_eval.json"


def record_serving(storage_uri: str, pipeline_name: str, results: dict) -> None:
    """Keeps the promoted model's scores (it is now the one serving) for later gates."""
    storage.write_json(recorded_uri(storage_uri, pipeline_name), {
        "model": results.get("model"), "model_sha256": results.get("model_sha256"),
        "perplexity": results.get("perplexity") or {}})


def decide(rules, results: dict, storage_uri: str, pipeline_name: str | None, what: str) -> gate.Verdict:
    """Applies the gate to an eval job's results; raises GateFailedError with both scores side by side.

    Without a baseline scored by the job itself, the serving model's recorded scores (if any) are used.
    """
    if not (results.get("baseline") or {}).get("perplexity") and pipeline_name:
        rec = recorded_uri(storage_uri, pipeline_name)
        if storage.is_file(rec):
            results = gate.with_recorded_baseline(results, storage.read_json(rec))
    return gate.enforce(rules, results, what)
