"""`rayworks run` and `rayworks lineage`."""

from __future__ import annotations

import json


def cmd_run(a):
    from rayworks.config.pipeline import load_pipeline
    from rayworks.client.pipeline import run

    pipe = load_pipeline(a.pipeline, a.set)
    run(pipe, address=a.address, bring_up=True, follow=not a.quiet)


def cmd_lineage(a):
    from rayworks.config.cluster import load_cluster_spec
    from rayworks.client.lineage import chain, format_chain

    spec = load_cluster_spec(a.cluster)
    nodes = chain(a.target, spec.storage.uri)
    print(json.dumps(nodes, indent=2) if a.json else format_chain(nodes))
    return 1 if any(n["status"] != "ok" for n in nodes) else 0


def register(sub) -> None:
    p = sub.add_parser("run", help="run a pipeline: prep -> train -> serve as Ray jobs, then one completion")
    p.add_argument("pipeline", help="pipeline YAML (e.g. jobs/configs/demo.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value, also inside a stage: --set train.run.num_steps=30")
    p.add_argument("--address", help="dashboard URL of a running cluster (default: the spec's; local ones are started)")
    p.add_argument("--quiet", action="store_true", help="do not stream the stages' logs")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("lineage", help="print an artifact's chain back to its input files")
    p.add_argument("target", help="an artifact dir, a manifest.json, or a served model id")
    p.add_argument("--cluster", help="cluster spec whose storage holds the artifacts (default: local)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_lineage)
