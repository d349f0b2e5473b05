"""`rayworks cluster ...`: render a spec for `ray up` / KubeRay, validate a spec, regenerate golden files.

    rayworks cluster validate cluster/aws.yaml
    rayworks cluster render cluster/aws.yaml --target ray-up --out /tmp/rendered
    rayworks cluster render cluster/kubernetes.yaml --target kuberay          # to stdout (+ NetworkPolicy)
    rayworks cluster render-all            # = make render: rewrites cluster/rendered/
    rayworks cluster render-all --check    # exit 1 when cluster/rendered/ is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path


def _gpus(node) -> str:
    return f" {node.num_gpus} x {node.accelerator_type or 'GPU'}" if node.num_gpus else ""


def cmd_validate(a) -> int:
    from rayworks.cluster.render import default_target, render_spec
    from rayworks.config.cluster import load_cluster_spec

    spec = load_cluster_spec(a.spec)
    # Rendering catches what only a target can refuse (e.g. an unknown GCE accelerator).
    ptype = spec.provider.type
    if ptype != "local":
        render_spec(spec, default_target(spec))
    groups = ", ".join(f"{g.name}({g.role}: {g.min_workers}-{g.max_workers} x {g.num_cpus} CPU"
                       f"{_gpus(g)})"
                       for g in spec.worker_groups) or "none"
    print(f"{a.spec}: valid {ptype} spec {spec.name!r}; head {spec.head.num_cpus} CPU; worker groups: {groups}")
    uri = spec.tracking.client_uri(ptype)
    if uri:
        print(f"tracking: MLflow at {uri}")
    elif spec.tracking.enabled:  # enabled, but a cloud spec without uri: say so rather than stay silent
        print("tracking: off: rayworks runs an MLflow server only beside a local cluster; set tracking.uri "
              "to your MLflow server to log runs from this cluster")
    else:
        print("tracking: off (tracking.enabled: false)")
    return 0


def cmd_render(a) -> int:
    from rayworks.cluster.render import display_path, render_files

    command = f"rayworks cluster render {display_path(a.spec)} --target {a.target}"
    files = render_files(a.spec, a.target, command, a.out.rstrip("/") if a.out else ".")
    if not a.out:
        # One multi-document stream (`| kubectl apply -f -` applies the NetworkPolicy with the cluster).
        sys.stdout.write("---\n".join(files.values()))
        return 0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
    return 0


def cmd_render_all(a) -> int:
    from rayworks.cluster.render import REPO, RENDERED, drift, render_all, write_all

    folder = REPO / RENDERED
    if a.check:
        problems = drift(render_all(), folder)
        if problems:
            print(f"{RENDERED} is out of date ({'; '.join(problems)}); run `make render`", file=sys.stderr)
            return 1
        print(f"{RENDERED} is up to date")
        return 0
    names = write_all(folder)
    print(f"rendered {len(names)} files into {RENDERED}/: {', '.join(names)}")
    return 0


def register(sub) -> None:
    """Adds `rayworks cluster {validate,render,render-all}`."""
    p = sub.add_parser("cluster", help="validate a cluster spec, render it for `ray up` or KubeRay")
    csub = p.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")

    v = csub.add_parser("validate", help="validate a cluster spec (exit 2 with one line when it is bad)")
    v.add_argument("spec", help="cluster spec YAML, e.g. cluster/aws.yaml")
    v.set_defaults(func=cmd_validate)

    r = csub.add_parser("render", help="render a spec to a `ray up` YAML, or a KubeRay RayCluster and its "
                                       "NetworkPolicy")
    r.add_argument("spec", help="cluster spec YAML")
    r.add_argument("--target", required=True, choices=["ray-up", "kuberay"],
                   help="ray-up (aws, gcp specs) or kuberay (kubernetes specs)")
    r.add_argument("--out", help="folder to write <spec>.<target>.yaml (and <spec>.networkpolicy.yaml) into "
                                 "(default: stdout)")
    r.set_defaults(func=cmd_render)

    ra = csub.add_parser("render-all", help="regenerate every golden file under cluster/rendered/ (make render)")
    ra.add_argument("--check", action="store_true", help="only report drift; exit 1 when files are out of date")
    ra.set_defaults(func=cmd_render_all)
