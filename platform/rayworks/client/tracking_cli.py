"""`rayworks tracking up|down|status`: the MLflow server beside a local cluster.

``rayworks up`` runs ``tracking up`` too (and ``rayworks down`` stops it), so a local
cluster has experiment tracking and a model registry from its first job; these commands
start, stop or inspect the server alone (rayworks.tracking.server has the details).
"""

from __future__ import annotations


def _spec(path):
    from rayworks.config.cluster import load_cluster_spec

    return load_cluster_spec(path)


def manages_server(spec) -> bool:
    """True when rayworks runs the spec's MLflow server (enabled, no external uri, local provider)."""
    t = spec.tracking
    return t.enabled and t.uri is None and spec.provider.type == "local"


def up_with_cluster(spec) -> None:
    """Called by `rayworks up`: start the spec's MLflow server; a failure warns, the cluster stays up."""
    from rayworks.errors import RayworksError
    from rayworks.tracking import server

    if not manages_server(spec):
        return
    try:
        server.up(spec)
        print(f"  MLflow UI:     {spec.tracking.client_uri()}")
    except RayworksError as exc:
        print(f"warning: the MLflow server did not start ({exc}); jobs run without tracking until "
              "`rayworks tracking up` succeeds")


def down_with_cluster(spec) -> None:
    """Called by `rayworks down`: stop the MLflow server rayworks started for the spec, if any."""
    from rayworks.tracking import server

    if manages_server(spec):
        server.down(spec, quiet=True)


def cmd_up(a) -> int:
    from rayworks.tracking import server

    spec = _spec(a.spec)
    st = server.up(spec)
    print(f"  MLflow UI: {st['url']}  (from another machine: ssh -L {spec.tracking.port}:127.0.0.1:"
          f"{spec.tracking.port} <this host>)")
    return 0


def cmd_down(a) -> int:
    from rayworks.tracking import server

    server.down(_spec(a.spec))
    return 0


def cmd_status(a) -> int:
    from rayworks.tracking import experiment_name, server

    spec = _spec(a.spec)
    st = server.status(spec)
    if st["uri"] is None:
        print(f"tracking is off for {spec.name!r} (tracking.enabled: false, or a cloud spec without tracking.uri)")
        return 0
    who = "run by rayworks" if st["managed"] else "external"
    print(f"tracking for {spec.name!r}: {st['uri']} ({who}) {'up' if st['healthy'] else 'NOT answering'}")
    print(f"  experiment: {experiment_name(spec)}")
    if st["managed"]:
        print(f"  pid: {st['pid'] or '-'}  backend store: sqlite:///{st['paths']['db']}")
        print(f"  artifacts: {st['paths']['artifacts']}  log: {st['paths']['log']}")
    return 0 if st["healthy"] else 1


def register(sub) -> None:
    """Adds `rayworks tracking up|down|status` to the CLI."""
    p = sub.add_parser("tracking", help="the MLflow tracking server of a local cluster (up / down / status)")
    tsub = p.add_subparsers(dest="tracking_command", required=True, metavar="ACTION")
    for name, fn, hlp in [("up", cmd_up, "start MLflow's server (SQLite store, artifacts under the spec's storage, "
                                         "bound to tracking.host)"),
                          ("down", cmd_down, "stop the MLflow server rayworks started (nothing else)"),
                          ("status", cmd_status, "where runs go and whether the server answers")]:
        q = tsub.add_parser(name, help=hlp)
        q.add_argument("spec", nargs="?", help="cluster spec YAML (default: cluster/local.yaml)")
        q.set_defaults(func=fn)
