"""Preflight: can the job's resource request ever fit the cluster spec, and is its input there?

Runs before anything is submitted. It reasons about the spec's largest possible
cluster (every group at max_workers), so a request that fails here could never
be scheduled, only wait forever. Then come the config's own checks against the spec
(``JobBase.preflight``, pure) and the kind's area preflight (``KINDS[kind].preflight``:
files, tokenizers, the shell), imported by path so that this module imports no area.
"""

from __future__ import annotations

from rayworks.config.cluster import ClusterSpec
from rayworks.config.jobs import KINDS, Bundle, JobBase, import_path
from rayworks.errors import ConfigError


def _fits(bundle: Bundle, node) -> bool:
    if bundle.num_cpus > node.num_cpus or bundle.num_gpus > node.num_gpus:
        return False
    if bundle.accelerator_type and bundle.num_gpus > 0:
        return (node.accelerator_type or "").lower() == bundle.accelerator_type.lower()
    return True


def check_resources(bundles: list[Bundle], spec: ClusterSpec) -> None:
    """Raises ConfigError naming the request and the spec's limit when it cannot fit."""
    for b in bundles:
        nodes = [(name, node, n) for name, node, n in spec.node_types() if n > 0 and _fits(b, node)]
        if not nodes:
            acc = f" of type {b.accelerator_type}" if b.accelerator_type else ""
            biggest = max(spec.node_types(), key=lambda t: (t[1].num_gpus, t[1].num_cpus))[1]
            raise ConfigError(
                f"{b.what} needs {b.num_cpus:g} CPU and {b.num_gpus:g} GPU{acc} per unit, but no node type in "
                f"spec {spec.name!r} has that (largest: {biggest.num_cpus} CPU, {biggest.num_gpus} GPU "
                f"{biggest.accelerator_type or ''}); lower the request or add a worker group that fits")
        if b.num_gpus > 0:
            cap = sum(int(node.num_gpus // b.num_gpus) * n for _, node, n in nodes)
            total_gpus = sum(node.num_gpus * n for _, node, n in nodes)
            if cap < b.count:
                raise ConfigError(
                    f"{b.what} needs {b.count} x {b.num_gpus:g} GPU = {b.count * b.num_gpus:g} GPUs"
                    f"{' of type ' + b.accelerator_type if b.accelerator_type else ''}, but spec {spec.name!r} "
                    f"tops out at {total_gpus} such GPUs ({cap} units); lower the number of workers/replicas "
                    f"or raise max_workers of a GPU group")
        else:
            cap = sum(int(node.num_cpus // max(b.num_cpus, 1e-9)) * n for _, node, n in nodes)
            if cap < b.count:
                raise ConfigError(
                    f"{b.what} needs {b.count} x {b.num_cpus:g} CPU = {b.count * b.num_cpus:g} CPUs, but spec "
                    f"{spec.name!r} tops out at {cap} such units; lower the request or raise max_workers")
    total_cpu = sum(b.num_cpus * b.count for b in bundles)
    spec_cpu = sum(node.num_cpus * n for _, node, n in spec.node_types())
    if total_cpu > spec_cpu:
        raise ConfigError(f"the job needs {total_cpu:g} CPUs at once but spec {spec.name!r} has at most "
                          f"{spec_cpu} CPUs; lower the request or raise num_cpus/max_workers")


def check_config(job: JobBase, spec: ClusterSpec) -> None:
    """What the configs alone decide: resources and config-vs-spec checks, for the job and its sub-jobs.

    A pipeline's stages are validated here with the links the pipeline fills in, so a bad
    stage fails before the first one runs. Reads no files (a stage's input may not exist yet).
    """
    for j in [job, *job.sub_jobs(spec)]:
        check_resources(j.resources_on(spec), spec)
        j.preflight(spec)


def area_preflight(job: JobBase, spec: ClusterSpec) -> None:
    """The kind's own checks of files, tokenizers and the shell (registered in KINDS)."""
    kind = KINDS.get(job.kind)
    if kind is not None and kind.preflight:
        import_path(kind.preflight)(job, spec)


def preflight(job: JobBase, spec: ClusterSpec) -> None:
    """All checks that must pass before a job is submitted."""
    check_config(job, spec)
    area_preflight(job, spec)
