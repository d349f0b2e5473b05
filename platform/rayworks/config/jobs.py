"""The job envelope shared by every job kind, and the kind registry.

A job YAML has a ``kind`` (prep, train, serve, generate, pipeline) that selects a
strict model. Each kind registers its config class, its runner, its entrypoint and
its area preflight here by import path, so the CLI and validation never import
torch/vllm/deepspeed, and this package never imports the areas (configs are pure
schemas; checks that look at files, tokenizers or the shell live beside each runner).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple

from pydantic import Field, model_validator

from rayworks.config.base import StrictModel, read_yaml, set_override, validate_model
from rayworks.config.envcheck import check_env_vars
from rayworks.errors import ConfigError

if TYPE_CHECKING:
    from rayworks.config.cluster import ClusterSpec



class Kind(NamedTuple):
    """Where a job kind's parts live, as ``module:attr`` import paths (imported only when used)."""

    config: str       # the strict config model
    runner: str       # run(job) on the cluster
    entrypoint: str   # job script relative to the project root
    preflight: str | None  # check(job, spec) on the client: files, tokenizers, the shell; raises ConfigError


KINDS: dict[str, Kind] = {
    "prep": Kind("rayworks.config.prep:PrepJob", "rayworks.data.job:run", "jobs/prep.py",
                 "rayworks.data.preflight:check"),
    "train": Kind("rayworks.config.train:TrainJob", "rayworks.train.job:run", "jobs/train.py",
                  "rayworks.train.preflight:check"),
    "serve": Kind("rayworks.config.serve:ServeJob", "rayworks.serve.job:run", "jobs/serve.py",
                  "rayworks.serve.preflight:check"),
    "generate": Kind("rayworks.config.generate:GenerateJob", "rayworks.generate.job:run", "jobs/generate.py",
                     "rayworks.generate.preflight:check"),
    "eval": Kind("rayworks.config.eval:EvalJob", "rayworks.eval.job:run", "jobs/eval.py", "rayworks.eval.preflight:check"),
    "embed": Kind("rayworks.config.embed:EmbedJob", "rayworks.retrieval.embed:run", "jobs/embed.py",
                  "rayworks.retrieval.preflight:check_embed"),
    "index": Kind("rayworks.config.index:IndexJob", "rayworks.retrieval.index:run", "jobs/index.py",
                  "rayworks.retrieval.preflight:check_index"),
    "pipeline": Kind("rayworks.config.pipeline:PipelineJob", "rayworks.client.pipeline:run", "jobs/pipeline.py", None),
}


def import_path(path: str):
    """Imports ``module:attr``."""
    module, attr = path.split(":")
    return getattr(importlib.import_module(module), attr)


class Bundle(StrictModel):
    """One unit of a job's resource request, for the preflight."""

    num_cpus: float = Field(1, ge=0, description="CPUs per unit.")
    num_gpus: float = Field(0, ge=0, description="GPUs per unit.")
    accelerator_type: str | None = Field(None, description="Required GPU type, if any.")
    count: int = Field(1, ge=1, description="How many such units the job needs at once.")
    what: str = Field("job", description="Which part of the job asks for it (for error messages).")


class JobRuntimeEnv(StrictModel):
    """Per-job additions to the cluster spec's runtime environment."""

    env_vars: dict[str, str] = Field(default_factory=dict, description="Extra non-secret environment variables for this job.")
    pip: list[str] = Field(default_factory=list, description="Extra pip packages for this job (installed by Ray's runtime env).")

    @model_validator(mode="after")
    def _no_secrets(self) -> "JobRuntimeEnv":
        # Same check as the cluster spec's runtime_env: these values go into the job's runtime_env.
        check_env_vars(self.env_vars, "runtime_env.env_vars")
        return self


class JobBase(StrictModel):
    """Fields every job kind has."""

    kind: str = Field(..., description="Job kind: prep, train, serve, generate or pipeline.")
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="Run name; names output folders and the Ray job.")
    cluster: str | None = Field(None, description="Cluster spec file (relative to this file); default: the embedded local spec.")
    runtime_env: JobRuntimeEnv = Field(default_factory=JobRuntimeEnv, description="Per-job runtime env additions.")

    # Names of fields holding local paths, resolved relative to the config file at load time.
    path_fields: ClassVar[tuple[str, ...]] = ()

    def resource_request(self) -> list[Bundle]:
        """Resources the job needs at once (checked against the spec by the preflight)."""
        return [Bundle(num_cpus=1, what=f"{self.kind} driver")]

    def resources_on(self, spec: "ClusterSpec") -> list[Bundle]:
        """What the job needs at once on this cluster (kinds whose shape depends on the spec override it)."""
        return self.resource_request()

    def preflight(self, spec: "ClusterSpec") -> None:
        """Kind-specific checks of the config against the spec alone (no files, no shell); raise ConfigError.

        Checks that read files, tokenizers or the environment are the kind's area preflight
        (``KINDS[kind].preflight``), run after this one by :func:`rayworks.client.preflight.preflight`.
        """

    def sub_jobs(self, spec: "ClusterSpec") -> list["JobBase"]:
        """Jobs this one submits in turn (a pipeline's stages), validated; the preflight checks each."""
        return []

    def resolve_paths(self, base: Path) -> None:
        """Makes relative local paths absolute, relative to the config file's folder."""
        if self.cluster and not _is_uri(self.cluster):
            self.cluster = str((base / os.path.expanduser(self.cluster)).resolve())
        for dotted in self.path_fields:
            _resolve_field(self, dotted, base)

    def cluster_spec(self) -> "ClusterSpec":
        from rayworks.config.cluster import load_cluster_spec

        return load_cluster_spec(self.cluster)

    def explicit_output(self) -> str | None:
        """The kind's own output setting, if the user gave one (prep ``output_uri``, train
        ``run.output_uri``, generate ``output.uri``); None means the convention."""
        return None

    def artifact_uri(self, spec: "ClusterSpec | None" = None) -> str:
        """Where this job's artifact (its folder with ``manifest.json``) lives, for every kind:
        the explicit output setting, else ``{storage}/{kind}/{name}``."""
        explicit = self.explicit_output()
        if explicit:
            return explicit.rstrip("/")
        return default_artifact_uri((spec or self.cluster_spec()).storage.uri, self.kind, self.name)


def default_artifact_uri(storage_uri: str, kind: str, name: str) -> str:
    """The output convention: ``{storage}/{kind}/{name}``."""
    return f"{storage_uri.rstrip('/')}/{kind}/{name}"


def _is_uri(p: str) -> bool:
    return "://" in p


def resolve_path(value: str, base: Path) -> str:
    """Absolute local path for ``value`` (relative to ``base``); URIs pass through."""
    if _is_uri(value):
        return value
    return str((base / os.path.expanduser(value)).resolve())


def _resolve_field(obj, dotted: str, base: Path) -> None:
    head, _, rest = dotted.partition(".")
    if head.endswith("[]"):
        items = getattr(obj, head[:-2], None) or []
        if rest:
            for it in items:
                _resolve_field(it, rest, base)
        else:
            setattr(obj, head[:-2], [resolve_path(v, base) for v in items])
        return
    val = getattr(obj, head, None)
    if val is None:
        return
    if rest:
        _resolve_field(val, rest, base)
    elif isinstance(val, str):
        setattr(obj, head, resolve_path(val, base))


def job_class(kind: str) -> type[JobBase]:
    if not isinstance(kind, str):
        raise ConfigError(f"kind: expected a string, one of {sorted(KINDS)} (got {type(kind).__name__})")
    if kind not in KINDS:
        raise ConfigError(f"kind: {kind!r} is not a job kind; use one of {sorted(KINDS)}")
    return import_path(KINDS[kind].config)


def load_job_data(data: dict, source: str, base: Path, text: str | None = None, expect_kind: str | None = None) -> JobBase:
    """Validates an already-parsed job mapping (used for pipeline stages too)."""
    kind = data.get("kind")
    if kind is None:
        raise ConfigError(f"{source}: missing key 'kind' (one of {sorted(KINDS)})")
    if not isinstance(kind, str):
        raise ConfigError(f"{source}: kind: expected a string, one of {sorted(KINDS)} (got {type(kind).__name__})")
    if expect_kind and kind != expect_kind:
        raise ConfigError(f"{source}: kind is {kind!r} but this entrypoint runs {expect_kind!r} jobs; "
                          f"use jobs/{kind}.py or `rayworks submit`")
    job = validate_model(job_class(kind), data, source, text)
    job.resolve_paths(base)
    return job


def load_job(path: str | Path, overrides: list[str] | None = None, expect_kind: str | None = None) -> JobBase:
    """Loads any job YAML, dispatching on ``kind``; paths resolve relative to the file."""
    data, text = read_yaml(path)
    for o in overrides or []:
        set_override(data, o)
    return load_job_data(data, str(path), Path(path).resolve().parent, text, expect_kind)


def dump_job(job: JobBase, path: str | Path) -> Path:
    """Writes the resolved config (what actually ran) as YAML."""
    import yaml

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False))
    return p
