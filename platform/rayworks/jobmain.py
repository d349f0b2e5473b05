"""Shared body of the thin `jobs/<kind>.py` Ray-job entrypoints."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from rayworks.errors import RayworksError


def main(kind: str, argv: list[str] | None = None) -> int:
    """Parses --config/--set, validates, runs the kind's runner; one-line error on failure."""
    ap = argparse.ArgumentParser(prog=f"jobs/{kind}.py", description=f"Run a rayworks {kind} job.")
    ap.add_argument("--config", required=True, help=f"{kind} job YAML")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    args = ap.parse_args(argv)
    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                 "RAY_USAGE_STATS_ENABLED": "0"}.items():
        os.environ.setdefault(k, v)
    try:
        from rayworks.config.jobs import KINDS, import_path, load_job

        job = load_job(args.config, args.set, expect_kind=kind)
        runner = import_path(KINDS[kind][1])
        runner(job)
    except RayworksError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the job's log gets the trace, the user a line
        traceback.print_exc()
        print(f"error: {kind} job failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0
