"""Builds the Grafana dashboards and the Prometheus config under dashboards/.

Run it after changing a panel in dashboards/panels.py (the drift test fails until
the committed JSON matches):

    python dashboards/generate.py          # rewrite dashboards/*.json and prometheus/prometheus.yml
    python dashboards/generate.py --check  # exit 1 if a committed file is out of date

Dashboards are built with Grafana's own Python SDK (``grafana-foundation-sdk``, in
the ``dev`` extra). Every panel queries a ``$datasource`` variable, so the JSON
imports into any Grafana with a Prometheus data source (README: Monitoring).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from panels import DASHBOARDS, GPU_ONLY, RETRIEVAL_ONLY, Dashboard, Panel  # noqa: E402,F401 - markers for the tests

PROMETHEUS_YML = HERE / "prometheus" / "prometheus.yml"
# The generic config runs on the head node (where Ray writes its scrape targets),
# for a cluster started with the default --temp-dir.
HEAD_DISCOVERY_FILE = "/tmp/ray/prom_metrics_service_discovery.json"
DS_UID = "${datasource}"
REFRESH = "30s"


def _sdk():
    try:
        from grafana_foundation_sdk.builders import common, dashboard, prometheus, stat, timeseries
        from grafana_foundation_sdk.cog.encoder import JSONEncoder
        from grafana_foundation_sdk.models import common as cm
        from grafana_foundation_sdk.models import dashboard as dm
    except ImportError as exc:  # the dev extra
        raise SystemExit("grafana-foundation-sdk is missing: pip install -e '.[dev]' (or `make setup`)") from exc
    return SimpleNamespace(common=common, dashboard=dashboard, prometheus=prometheus, stat=stat,
                           timeseries=timeseries, JSONEncoder=JSONEncoder, cm=cm, dm=dm)


def _panel(p: Panel, sdk):
    ds = sdk.dm.DataSourceRef(type_val="prometheus", uid=DS_UID)
    if p.kind == "stat":
        b = (sdk.stat.Panel().graph_mode(sdk.cm.BigValueGraphMode.AREA)
             .reduce_options(sdk.common.ReduceDataOptions().calcs(["lastNotNull"])))
    else:
        b = (sdk.timeseries.Panel().line_width(1).fill_opacity(10)
             .legend(sdk.common.VizLegendOptions().display_mode(sdk.cm.LegendDisplayMode.LIST)
                     .placement(sdk.cm.LegendPlacement.BOTTOM).show_legend(True)))
    b = b.title(p.title).description(p.description).unit(p.unit).datasource(ds).height(p.height).span(p.width)
    if p.min is not None:
        b = b.min(p.min)
    for i, (expr, legend) in enumerate(p.targets):
        q = sdk.prometheus.Dataquery().expr(expr).ref_id(chr(ord("A") + i)).datasource(ds)
        if legend:
            q = q.legend_format(legend)
        b = b.with_target(q)
    return b


def _variables(d: Dashboard, sdk):
    dashboard, dm = sdk.dashboard, sdk.dm
    out = [dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")]
    for v in d.variables:
        out.append(
            dashboard.QueryVariable(v.name).label(v.label).description(v.description)
            .datasource(dm.DataSourceRef(type_val="prometheus", uid=DS_UID))
            .query({"query": v.query, "refId": "PrometheusVariableQueryEditor-VariableQuery", "qryType": 1})
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .multi(True).include_all(True).all_value(".*").sort(dm.VariableSort.ALPHABETICAL_ASC))
    return out


def build(d: Dashboard) -> dict:
    """The Grafana dashboard JSON model of ``d``."""
    sdk = _sdk()
    dashboard = sdk.dashboard
    b = (dashboard.Dashboard(d.title).uid(d.uid).description(d.description).tags(["rayworks", *d.tags])
         .refresh(REFRESH).time("now-1h", "now").timezone("browser").tooltip(sdk.dm.DashboardCursorSync.CROSSHAIR))
    for v in _variables(d, sdk):
        b = b.with_variable(v)
    for row in d.rows:
        b = b.with_row(dashboard.Row(row.title))
        for p in row.panels:
            b = b.with_panel(_panel(p, sdk))
    model = json.loads(sdk.JSONEncoder(sort_keys=True).encode(b.build()))
    # Stable, unique panel ids (the SDK leaves them 0); Grafana links and alerts use them.
    for i, panel in enumerate(model["panels"], start=1):
        panel["id"] = i
    model["id"] = None
    return model


def render_all() -> dict[Path, str]:
    """Every generated file and its exact text."""
    from rayworks.client.monitor import render_prometheus_config

    files = {HERE / f"{d.uid}.json": json.dumps(build(d), indent=2, sort_keys=True) + "\n" for d in DASHBOARDS}
    files[PROMETHEUS_YML] = render_prometheus_config(HEAD_DISCOVERY_FILE, loopback=False)
    return files


def stale_files() -> list[Path]:
    """Generated files whose committed text differs from what the generator makes now."""
    return [p for p, text in render_all().items() if not p.is_file() or p.read_text() != text]


def committed_dashboards() -> dict[str, dict]:
    """The shipped dashboard JSON files, by file name."""
    return {p.name: json.loads(p.read_text()) for p in sorted(HERE.glob("*.json"))}


def iter_queries(model: dict):
    """(panel, target) for every query of every panel of a dashboard model (rows included)."""
    for panel in model.get("panels", []):
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                yield p, t


def concrete(expr: str, rate_window: str = "1m") -> str:
    """A panel query as Grafana sends it with every variable at "All".

    ``$__rate_interval`` becomes ``rate_window``; a template variable (``$run``,
    ``${run}``) becomes ``.*``, its "All" value (variables are used with ``=~``).
    """
    import re

    expr = expr.replace("$__rate_interval", rate_window).replace("${__rate_interval}", rate_window)
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="report out-of-date files instead of writing them")
    a = ap.parse_args(argv)
    if a.check:
        stale = stale_files()
        for p in stale:
            print(f"out of date: {p.relative_to(HERE.parent)} (run `python dashboards/generate.py`)")
        return 1 if stale else 0
    for p, text in render_all().items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        print(f"wrote {p.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
