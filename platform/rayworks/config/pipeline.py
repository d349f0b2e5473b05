"""The `pipeline` job: prep -> train -> serve (three Ray jobs) from one YAML.

Each stage is a path to that kind's own job YAML (relative to this file) or the job
inlined as a mapping. The pipeline links the stages: train's ``data.prep_uri`` is
set to the prep output and every served model's ``source`` to the training export
(whatever the stage files say), so lineage always holds. ``--set train.run.num_steps=30`` reaches into any stage.
Optional ``embed`` and ``index`` stages (after train) build a vector index: the
index reads the embed output, the serve stage gets it attached (``retrieval.index``), and an
embed stage that names no ``model`` embeds with the training export.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from rayworks.config.base import StrictModel, read_yaml, set_override
from rayworks.config.jobs import Bundle, JobBase, load_job_data, resolve_path
from rayworks.errors import ConfigError

if TYPE_CHECKING:
    from rayworks.config.cluster import ClusterSpec

# embed and index before eval: the eval stage reads the serve stage's config (the model now
# serving), which needs its retrieval.index link filled in.
STAGES = ("prep", "train", "embed", "index", "eval", "serve")
OPTIONAL_STAGES = ("eval", "embed", "index")  # skipped when the pipeline has none
BASE_KEY = "_base"  # where an inlined stage's relative paths resolve from


class CorpusStep(StrictModel):
    """Build the demo corpus from text that ships with Python before prep runs."""

    source: Literal["python-docs"] = Field("python-docs", description="Corpus builder (python-docs: pydoc topics + stdlib sources).")
    output: str = Field(..., description="Directory to write the corpus into (skipped when it already holds one).")
    size_mb: float | None = Field(None, gt=0, description="Target size in MB (default: the builder's natural size).")


class SmokeTest(StrictModel):
    """One real completion sent to the served model at the end."""

    enabled: bool = Field(True, description="Send the completion and fail the pipeline if it does not come back.")
    prompt: str = Field("def ", description="Prompt of the smoke-test completion.")
    max_tokens: int = Field(16, ge=1, description="Tokens to generate.")
    timeout_s: float = Field(120, gt=0, description="How long to wait for the answer.")


class PipelineJob(JobBase):
    """Text to a served model: prep, train and serve as three Ray jobs, in order."""

    kind: Literal["pipeline"] = Field("pipeline", description="Always pipeline.")
    corpus: CorpusStep | None = Field(None, description="Optional corpus build before prep.")
    prep: str | dict[str, Any] = Field(..., description="The prep job: a YAML path or an inline mapping.")
    train: str | dict[str, Any] = Field(..., description="The train job: a YAML path or an inline mapping.")
    eval: str | dict[str, Any] | None = Field(
        None, description="Optional eval job (YAML path or mapping) between train and serve: its gate rules decide "
                          "whether the new export may replace the model now serving (a failing model is not deployed).")
    embed: str | dict[str, Any] | None = Field(
        None, description="Optional embed job (YAML path or mapping): chunks and embeds documents; with no 'model' "
                          "it embeds with the training export.")
    index: str | dict[str, Any] | None = Field(
        None, description="Optional index job (YAML path or mapping) over the embed stage's output (needs an embed "
                          "stage); the serve stage gets it attached as retrieval.index.")
    serve: str | dict[str, Any] | None = Field(None, description="The serve job (YAML path or mapping); none: stop after training.")
    smoke_test: SmokeTest = Field(default_factory=SmokeTest, description="The final completion.")
    force: list[Literal["prep", "train", "eval", "embed", "index", "serve"]] = Field(
        default_factory=list, description="Stages to rerun even when their outputs are up to date.")
    job_timeout_s: float = Field(3600, gt=0, description="Longest a single stage may run.")

    path_fields: ClassVar[tuple[str, ...]] = ("corpus.output",)

    def resource_request(self) -> list[Bundle]:
        return [Bundle(num_cpus=1, what="pipeline driver")]

    @model_validator(mode="after")
    def _index_needs_embed(self) -> "PipelineJob":
        if self.index is not None and self.embed is None:
            raise ValueError("an index stage needs an embed stage (the index is built from its embeddings)")
        return self

    def resolve_paths(self, base: Path) -> None:
        super().resolve_paths(base)
        for stage in STAGES:
            val = getattr(self, stage)
            if isinstance(val, str):
                setattr(self, stage, resolve_path(val, base))
            elif isinstance(val, dict) and BASE_KEY not in val:
                setattr(self, stage, {**val, BASE_KEY: str(base)})

    def stage_data(self, stage: str) -> tuple[dict, Path]:
        """The stage's raw mapping and the folder its relative paths resolve from."""
        val = getattr(self, stage)
        if isinstance(val, str):
            data, _ = read_yaml(val)
            return data, Path(val).parent
        data = copy.deepcopy(val)
        base = data.pop(BASE_KEY, None)
        if not isinstance(base, str):
            raise ConfigError(f"{self.name}:{stage}: {BASE_KEY!r} is set by rayworks; remove it from the stage")
        return data, Path(base)

    def stage_job(self, stage: str, links: dict[str, str]) -> JobBase:
        """Validates one stage with the pipeline's cluster, name and links to upstream outputs."""
        data, base = self.stage_data(stage)
        source = f"{self.name}:{stage}"
        data.setdefault("name", f"{self.name}-{stage}")
        if self.cluster:
            data["cluster"] = self.cluster
        # The pipeline owns the links: a stage always reads what the stage before it wrote,
        # so the lineage chain cannot point at some other artifact.
        if stage == "train" and "prep_output" in links:
            section = data.setdefault("data", {})
            if not isinstance(section, dict):
                raise ConfigError(f"{source}: data: expected a mapping (got {type(section).__name__})")
            section["prep_uri"] = links["prep_output"]
        if stage == "eval" and "export_dir" in links:
            # The candidate is the new export; the baseline is the model now serving (filled in at run time).
            data["model"] = links["export_dir"]
            if links.get("serving_source"):
                data["compare_to"] = links["serving_source"]
            ppl = data.get("perplexity")
            if isinstance(ppl, dict) and "prep_output" in links:
                ppl["prep_uri"] = links["prep_output"]
        if stage == "serve" and "export_dir" in links:
            models = data.get("models") or []
            if not isinstance(models, list):
                raise ConfigError(f"{source}: models: expected a list of models (got {type(models).__name__})")
            for m in models:
                if isinstance(m, dict):
                    m["source"] = links["export_dir"]
        link_retrieval(stage, data, links, source)
        return load_job_data(data, source, base, expect_kind=stage)

    def stage_jobs(self, spec: "ClusterSpec") -> dict[str, JobBase]:
        """Every stage validated up front, each with the links the run will fill in.

        Used by the preflight (``rayworks validate`` and the start of ``rayworks run``), so a
        bad serve stage fails before prep and training spend their time.
        """
        jobs: dict[str, JobBase] = {}
        links: dict[str, str] = {}
        for stage in STAGES:
            if getattr(self, stage) is None:
                continue
            job = jobs[stage] = self.stage_job(stage, links)
            links.update(stage_links(stage, job, spec))
        return jobs

    def sub_jobs(self, spec: "ClusterSpec") -> list[JobBase]:
        return list(self.stage_jobs(spec).values())


def link_retrieval(stage: str, data: dict, links: dict[str, str], source: str) -> None:
    """The embed/index/serve links of a stage's raw mapping: embed <- export (when it names no model),
    index <- embed output, serve's retrieval.index <- index output."""
    if stage == "embed" and "export_dir" in links and not data.get("model"):
        data["model"] = links["export_dir"]
    if stage == "index" and "embed_output" in links:
        data["embeddings"] = links["embed_output"]
    if stage == "serve" and "index_output" in links:
        section = data.get("retrieval")
        if section is None:
            section = data["retrieval"] = {}
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: retrieval: expected a mapping (got {type(section).__name__})")
        section["index"] = links["index_output"]


def stage_links(stage: str, job: JobBase, spec: "ClusterSpec") -> dict[str, str]:
    """What the stages after this one read from it: prep's output folder, train's export folder,
    embed's and index's output folders."""
    if stage == "prep":
        return {"prep_output": job.artifact_uri(spec)}
    if stage == "train":
        return {"export_dir": f"{job.artifact_uri(spec)}/export"}
    if stage in ("embed", "index"):
        return {f"{stage}_output": job.artifact_uri(spec)}
    return {}


def load_pipeline(path: str | Path, overrides: list[str] | None = None) -> PipelineJob:
    """Loads a pipeline, inlining file stages first so --set can reach into them."""
    data, text = read_yaml(path)
    for stage in STAGES:
        val = data.get(stage)
        if isinstance(val, str):
            p = Path(resolve_path(val, Path(path).resolve().parent))
            inner, _ = read_yaml(p)
            data[stage] = {**inner, BASE_KEY: str(p.parent)}
    for o in overrides or []:
        set_override(data, o)
    job = load_job_data(data, str(path), Path(path).resolve().parent, text, expect_kind="pipeline")
    assert isinstance(job, PipelineJob)
    return job
