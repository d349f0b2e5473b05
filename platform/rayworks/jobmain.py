"""The Ray-job entrypoint of every kind: ``python -m rayworks.jobmain KIND --config FILE``.

`rayworks submit` runs this module (the package travels with the job, so no checkout is
needed); ``jobs/<kind>.py`` are thin wrappers over :func:`main` for plain ``ray job submit``.

Plain ``ray job submit --working-dir .`` runs the job inside Ray's temporary copy of that
folder, under the Ray session directory: relative inputs would be read from the copy
(where git-ignored data is absent) and relative storage would be written there and vanish
with the session. So ``--base-dir "$PWD"`` names the folder the command was meant from,
and without it a job that runs in such a copy refuses, before any work, when any local
path it would read or write (storage included) lies under the session directory.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from rayworks.errors import ConfigError, RayworksError

# Ray unpacks a job's working_dir under <session dir>/runtime_resources/working_dir_files/.
_RUNTIME_RESOURCES = "runtime_resources"


def ray_session_dir(cwd: Path) -> Path | None:
    """The Ray session directory when ``cwd`` is a runtime-env copy inside it, else None."""
    parts = cwd.parts
    if _RUNTIME_RESOURCES in parts:
        return Path(*parts[:parts.index(_RUNTIME_RESOURCES)])
    return None


def _local_paths(obj, dotted: str):
    """The values of a ``path_fields`` entry (``a.b``, ``items[].path``) on a loaded job."""
    head, _, rest = dotted.partition(".")
    many = head.endswith("[]")
    val = getattr(obj, head.removesuffix("[]"), None)
    items = (val or []) if many else ([] if val is None else [val])
    for it in items:
        if rest:
            yield from _local_paths(it, rest)
        elif isinstance(it, str) and "://" not in it:
            yield dotted, it


def check_not_in_session_copy(job, session: Path) -> None:
    """Refuses a job whose local paths (or storage) resolve inside Ray's temporary session dir."""
    found = [(f, p) for f in type(job).path_fields for f, p in _local_paths(job, f)]
    spec = job.cluster_spec()
    if not spec.storage.is_remote:
        found.append(("cluster spec storage.uri", spec.storage.uri))
    for field, path in found:
        if Path(path).resolve().is_relative_to(session.resolve()):
            raise ConfigError(
                f"{field} resolves to {path}, inside Ray's temporary copy of the job's working dir, which "
                f"vanishes with the Ray session; add --base-dir \"$PWD\" to the job's command (relative paths "
                f"then mean your folder), use absolute paths, or submit with `rayworks submit`")


def main(kind: str | None = None, argv: list[str] | None = None) -> int:
    """Parses --config/--set/--base-dir, validates, runs the kind's runner; one-line error on failure."""
    ap = argparse.ArgumentParser(prog=f"jobs/{kind}.py" if kind else "python -m rayworks.jobmain",
                                 description=f"Run a rayworks {kind} job." if kind else "Run a rayworks job.")
    if kind is None:
        ap.add_argument("kind", help="job kind: prep, train, serve, generate or pipeline")
    ap.add_argument("--config", required=True, help="job YAML")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    ap.add_argument("--base-dir", default=None, metavar="DIR",
                    help="the folder relative paths mean (give \"$PWD\" with `ray job submit --working-dir .`): "
                         "the config is read from there, and the job runs as if started there")
    args = ap.parse_args(argv)
    kind = kind or args.kind
    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
                 "RAY_USAGE_STATS_ENABLED": "0"}.items():
        os.environ.setdefault(k, v)
    try:
        from rayworks.config.jobs import KINDS, import_path, load_job
        from rayworks.secrets import unseal_env

        session = ray_session_dir(Path.cwd())
        if args.base_dir:
            base = Path(args.base_dir).expanduser()
            if not base.is_dir():
                raise ConfigError(f"--base-dir {args.base_dir}: no such folder on the node running the job; "
                                  "give a folder the cluster can see (on a remote cluster use `rayworks submit`)")
            os.chdir(base)  # the config, its relative paths and the default spec mean the user's folder
            session = None
        if kind not in KINDS:
            raise ConfigError(f"kind {kind!r} is not a job kind; use one of {sorted(KINDS)}")
        job = load_job(args.config, args.set, expect_kind=kind)
        if session is not None:
            check_not_in_session_copy(job, session)
        try:
            unseal_env()
        except (RuntimeError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
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


if __name__ == "__main__":
    sys.exit(main())
