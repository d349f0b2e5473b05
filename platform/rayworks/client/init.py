"""`rayworks init DIR`: a new project folder laid out as the checkout is.

It writes the packaged default spec as ``DIR/cluster/local.yaml`` and the example job
configs as ``DIR/jobs/configs/*.yaml``: the same files, byte for byte, as the checkout's
(the package ships them from there). The layout is what makes them work unchanged: the
spec's storage ``../artifacts`` is ``DIR/artifacts``, the configs' ``../../artifacts/...``
and ``../../cluster/local.yaml`` point at the same places. Run from ``DIR``, every command
(``rayworks up``, ``submit jobs/configs/prep.yaml``, ``run jobs/configs/demo.yaml``) uses
``DIR/cluster/local.yaml`` as its default spec.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rayworks.errors import ConfigError

DEFAULTS = Path(__file__).resolve().parents[1] / "defaults"
# Kept out of git by the project's .gitignore; also keeps Ray from uploading data with
# `ray job submit --working-dir .` (Ray skips what .gitignore lists).
GITIGNORE = "/artifacts/\n"


def files() -> dict[str, Path]:
    """Project-relative path -> packaged source, for every file `init` writes."""
    out = {"cluster/local.yaml": DEFAULTS / "local.yaml"}
    for src in sorted((DEFAULTS / "configs").iterdir()):
        if src.suffix in (".yaml", ".jsonl"):
            out[f"jobs/configs/{src.name}"] = src
    return out


def init(target: str | Path, force: bool = False) -> list[Path]:
    """Writes the starter project into ``target``; refuses to overwrite unless ``force``."""
    root = Path(target).expanduser().resolve()
    todo = files()
    clash = [rel for rel in todo if (root / rel).exists()]
    if clash and not force:
        raise ConfigError(f"{root}: {', '.join(clash)} already exist; pick an empty folder or pass --force "
                          "to overwrite them")
    written = []
    for rel, src in todo.items():
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        written.append(dst)
    ignore = root / ".gitignore"
    if not ignore.exists():
        ignore.write_text(GITIGNORE)
        written.append(ignore)
    return written


def cmd_init(a) -> None:
    written = init(a.dir, force=a.force)
    root = Path(a.dir).expanduser().resolve()
    print(f"wrote a rayworks project in {root}:")
    for p in written:
        print(f"  {p.relative_to(root)}")
    print("next, from that folder:")
    print("  rayworks up                                   # the local cluster of cluster/local.yaml")
    print("  rayworks run jobs/configs/demo.yaml           # corpus -> prep -> train -> serve")
    print("  rayworks submit jobs/configs/prep.yaml        # or one job at a time")


def register(sub) -> None:
    p = sub.add_parser("init", help="write a starter project: cluster/local.yaml and jobs/configs/*.yaml")
    p.add_argument("dir", help="project folder (created if missing)")
    p.add_argument("--force", action="store_true", help="overwrite files that exist")
    p.set_defaults(func=cmd_init)
