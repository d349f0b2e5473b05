"""The `rayworks` command line.

Core commands live here; each job area adds its own through a ``register(sub)``
function in its ``cli`` module (listed in PLUGINS), so the CLI starts fast and
works without torch/vllm installed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from rayworks.errors import RayworksError

PLUGINS = [
    "rayworks.cluster.cli",     # cluster render / validate
    "rayworks.client.corpus_cli",        # corpus
    "rayworks.client.export_cli",       # export
    "rayworks.client.serve_cli",       # serve update / render
    "rayworks.client.pipeline_cli",    # run, lineage
    "rayworks.client.monitor",         # monitor up / down
    "rayworks.client.tracking_cli",    # tracking up / down / status (MLflow)
    "rayworks.client.init",            # init DIR: a starter project
]


def _spec(path):
    from rayworks.config.cluster import load_cluster_spec

    return load_cluster_spec(path)


def cmd_up(a):
    from rayworks.client import tracking_cli
    from rayworks.cluster import local

    spec = _spec(a.spec)
    local.up(spec)
    tracking_cli.up_with_cluster(spec)  # MLflow beside it (spec.tracking); a failure only warns


def cmd_down(a):
    from rayworks.client import tracking_cli
    from rayworks.cluster import local

    spec = _spec(a.spec)
    tracking_cli.down_with_cluster(spec)
    local.down(spec)


def cmd_status(a):
    from rayworks.cluster import local

    spec = _spec(a.spec)
    st = local.status(spec)
    print(f"cluster {spec.name!r}: dashboard {spec.dashboard_url}")
    ft = local.head_ft_summary(spec)
    if ft:
        print(f"  {ft}")
    if spec.worker_groups and spec.provider.type == "local":  # the autoscaler's own view: groups, demand
        from rayworks.cluster import multinode

        print(multinode.format_status(multinode.cluster_status(spec)))
        st["nodes"] = []
    for n in st["nodes"]:
        raylet = n.get("raylet", {})
        res = raylet.get("resourcesTotal", {})
        print(f"  node {n.get('ip')} {raylet.get('state', '')}: "
              + ", ".join(f"{k}={v:g}" for k, v in sorted(res.items()) if not k.startswith("node:")))
    jobs = st["jobs"]
    print(f"  jobs: {len(jobs)}")
    for j in jobs[-10:]:
        print(f"    {j.get('submission_id') or j.get('job_id')}  {j.get('status')}  {j.get('entrypoint', '')[:60]}")


def cmd_submit(a):
    if a.dry_run:
        return dry_run(a)
    from rayworks.client.submit import submit

    submit(a.job, cluster=a.cluster, address=a.address, overrides=a.set, follow=a.follow, wait=not a.no_wait)


def dry_run(a) -> int:
    """`submit --dry-run`: the same validation and preflight as submit, then what would go; contacts nothing."""
    import yaml

    from rayworks.config.cluster import load_cluster_spec
    from rayworks.config.jobs import load_job
    from rayworks.client.preflight import preflight

    job = load_job(a.job, a.set)
    if a.cluster:
        job.cluster = str(Path(a.cluster).resolve())
    spec = load_cluster_spec(job.cluster)
    preflight(job, spec)
    print(f"dry run: would submit {job.kind} job {job.name!r} to cluster {spec.name!r} at "
          f"{a.address or spec.dashboard_url} (nothing was contacted)")
    for b in job.resources_on(spec):
        gpu = f" + {b.num_gpus:g} GPU{' ' + b.accelerator_type if b.accelerator_type else ''}" if b.num_gpus else ""
        print(f"  needs {b.count} x ({b.num_cpus:g} CPU{gpu}) for {b.what}")
    print("  resolved config:")
    text = yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)
    print("\n".join(f"    {line}" for line in text.splitlines()))
    return 0


def _client(a):
    from rayworks.client.submit import client

    return client(_spec(a.cluster) if not a.address else None, a.address)


def cmd_jobs(a):
    for j in _client(a).list_jobs():
        print(f"{j.submission_id or j.job_id}  {j.status}  {j.entrypoint[:70]}")


def cmd_logs(a):
    from rayworks.client.submit import wait_for

    c = _client(a)
    if a.follow:
        wait_for(c, a.id, follow=True)
    else:
        sys.stdout.write(c.get_job_logs(a.id))


def cmd_stop(a):
    ok = _client(a).stop_job(a.id)
    print(f"stop requested for {a.id}" if ok else f"{a.id} is not running")


def cmd_schema(a):
    if a.kind == "cluster":
        from rayworks.config.cluster import ClusterSpec as model
    else:
        from rayworks.config.jobs import job_class

        model = job_class(a.kind)
    print(json.dumps(model.model_json_schema(), indent=2))


def cmd_validate(a):
    from rayworks.config.jobs import load_job
    from rayworks.client.preflight import preflight

    job = load_job(a.job, a.set)
    spec = _spec(a.cluster or job.cluster)
    preflight(job, spec)
    print(f"{a.job}: valid {job.kind} job; preflight against {spec.name!r} passed")


class _Parser(argparse.ArgumentParser):
    """Usage errors end like every other bad input: exit 2 with one line on stderr."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {' '.join(message.split())} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="rayworks", description="Raw text to a served LLM on one Ray cluster.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, fn, hlp in [("up", cmd_up, "start the local cluster of a spec"),
                          ("down", cmd_down, "stop what `rayworks up` started"),
                          ("status", cmd_status, "nodes, resources and jobs of a cluster")]:
        p = sub.add_parser(name, help=hlp)
        p.add_argument("spec", nargs="?", help="cluster spec YAML (default: cluster/local.yaml)")
        p.set_defaults(func=fn)

    def target(p):
        g = p.add_mutually_exclusive_group()
        g.add_argument("--cluster", help="cluster spec YAML (default: the job's `cluster`, else local)")
        g.add_argument("--address", help="dashboard URL, e.g. http://127.0.0.1:8265")

    p = sub.add_parser("submit", help="submit a job YAML (prep, train, serve, generate, pipeline)")
    p.add_argument("job")
    target(p)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    p.add_argument("--no-wait", action="store_true", help="return after submitting")
    p.add_argument("--dry-run", action="store_true",
                   help="validate and preflight, print what would be submitted, contact nothing")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("validate", help="validate a job YAML and run the preflight; submits nothing")
    p.add_argument("job")
    p.add_argument("--cluster")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("jobs", help="list jobs")
    target(p)
    p.set_defaults(func=cmd_jobs)
    for name, fn, hlp in [("logs", cmd_logs, "print a job's logs"), ("stop", cmd_stop, "stop a job")]:
        p = sub.add_parser(name, help=hlp)
        p.add_argument("id")
        target(p)
        if name == "logs":
            p.add_argument("--follow", action="store_true")
        p.set_defaults(func=fn)

    p = sub.add_parser("schema", help="print the JSON schema of the cluster spec or a job kind")
    p.add_argument("kind", help="cluster, prep, train, serve, generate or pipeline")
    p.set_defaults(func=cmd_schema)

    for mod in PLUGINS:  # all in this package, each importing only argparse-level code at import time
        importlib.import_module(mod).register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except RayworksError as exc:
        msg = str(exc)
        if exc.exit_code == 2:  # bad input: always exactly one line, whatever the message holds
            msg = " ".join(msg.split())
        print(f"error: {msg}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
