"""`rayworks serve ...`: roll out new weights, render the deployment for other routes.

    rayworks serve update --model tiny --source artifacts/train/v2/export
    rayworks serve update --index artifacts/index/docs-v2          # a rebuilt index, same zero-drop rollout
    rayworks serve render jobs/configs/serve.yaml --target serve     # a `serve deploy` file
    rayworks serve render jobs/configs/serve.yaml --target kuberay   # a KubeRay RayService
"""

from __future__ import annotations

import sys
from pathlib import Path


def cmd_update(a) -> int:
    from rayworks.client.rollout import update

    update(a.model, a.source, cluster=a.cluster, name=a.name, wait=not a.no_wait, gate=a.gate, index=a.index)
    return 0


def cmd_render(a) -> int:
    import yaml

    from rayworks.config.cluster import load_cluster_spec
    from rayworks.config.jobs import load_job
    from rayworks.serve.render import serve_app_config

    job = load_job(a.job, a.set, expect_kind="serve")
    spec = load_cluster_spec(a.cluster or job.cluster)
    cfg = serve_app_config(job, spec)
    if a.target == "kuberay":
        from rayworks.cluster.kuberay import rayservice

        # In a pod, Serve's proxy must listen on the pod's interfaces: let the renderer choose.
        cfg.pop("http_options", None)
        doc = rayservice(spec, job.serve_app_name, cfg)
    else:
        doc = cfg
    where = f"env var {job.auth.api_keys_env}" if job.auth.api_keys_env else job.auth.api_keys_file or "nowhere"
    if a.target == "kuberay" and job.auth.api_keys_file:
        from rayworks.cluster.kuberay import SERVE_KEYS_DIR, SERVE_KEYS_KEY, serve_keys_secret

        where = (f"the Secret {serve_keys_secret(spec)} (key {SERVE_KEYS_KEY}) mounted at {SERVE_KEYS_DIR}; create "
                 f"it with kubectl -n {spec.provider.namespace} create secret generic {serve_keys_secret(spec)} "
                 f"--from-file={SERVE_KEYS_KEY}=<your key file>")
    head = (f"# rendered by `rayworks serve render {a.job} --target {a.target}`; API keys are read from "
            f"{where} on the cluster, never stored here\n")
    text = head + yaml.safe_dump(doc, sort_keys=False)
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}")
    else:
        sys.stdout.write(text)
    return 0


def write_api_key(path: str | Path, replace: bool = False) -> None:
    """Writes a new API key to ``path``, readable only by its owner (0600).

    The one key writer (``serve keygen`` and the pipeline's local key file). Without
    ``replace`` an existing file is an error (O_EXCL); with it the file is rewritten in place.
    """
    import os
    import secrets

    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    # O_NOFOLLOW: never write a key through a symlink someone planted at that path.
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (0 if replace else os.O_EXCL)
    fd = os.open(p, flags, 0o600)
    os.fchmod(fd, 0o600)  # the mode above applies only to a new file; --force may replace a 0644 one
    os.ftruncate(fd, 0)   # only after the chmod: the new key is never in a file others can read
    with os.fdopen(fd, "w") as f:
        f.write(f"rw-{secrets.token_urlsafe(32)}\n")


def cmd_keygen(a) -> int:
    p = Path(a.file).expanduser()
    if p.exists() and not a.force:
        print(f"{p} exists; keeping it (--force makes a new key)")
        return 0
    write_api_key(p, replace=True)
    print(f"wrote a new API key to {p} (mode 0600); clients send it as 'Authorization: Bearer <key>'")
    return 0


def register(sub) -> None:
    p = sub.add_parser("serve", help="serving: roll out new weights, render Serve/KubeRay configs")
    ss = p.add_subparsers(dest="serve_command", required=True, metavar="SUBCOMMAND")

    u = ss.add_parser("update", help="replace a served model's weights or its index with zero dropped requests")
    u.add_argument("--model", help="model id in the serve job (with --source)")
    u.add_argument("--source", help="new export dir, s3:// / gs:// URI, or a registered "
                                                    "model version: models:/NAME/VERSION or models:/NAME@ALIAS")
    u.add_argument("--index", help="a new index job's output folder (or URI) for the app's retrieval; its "
                                   "Retriever replicas are replaced like an engine's")
    u.add_argument("--name", help="serve job name (default: the only one deployed)")
    u.add_argument("--cluster", help="cluster spec YAML (default: cluster/local.yaml)")
    u.add_argument("--no-wait", action="store_true", help="return after submitting")
    u.add_argument("--gate", metavar="EVAL_YAML",
                   help="an eval job config whose gate rules the new source must pass (scored beside the served "
                        "model) before it is deployed; a failing source is not deployed")
    u.set_defaults(func=cmd_update)

    r = ss.add_parser("render", help="render a serve job for `serve deploy` or KubeRay")
    r.add_argument("job", help="serve job YAML")
    r.add_argument("--target", choices=["serve", "kuberay"], default="serve")
    r.add_argument("--cluster", help="cluster spec YAML (default: the job's)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r.add_argument("-o", "--out", help="write to this file instead of stdout")
    r.set_defaults(func=cmd_render)

    k = ss.add_parser("keygen", help="write a random API key file for auth.api_keys_file (mode 0600)")
    k.add_argument("--file", default="~/.rayworks/serve_api_keys")
    k.add_argument("--force", action="store_true", help="replace an existing file")
    k.set_defaults(func=cmd_keygen)
