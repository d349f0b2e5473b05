"""Ray token auth, handled so users never think about it (STACK.md pitfall 5).

Ray reads the token from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token
and only sends it when RAY_AUTH_MODE=token. Every rayworks client and the local
head get that environment from :func:`auth_env`. The token's value is never
printed, logged or written into a rendered file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from rayworks.config.cluster import ClusterSpec
from rayworks.errors import ClusterError


def token_path(spec: ClusterSpec | None) -> Path:
    if spec is not None and spec.auth.token_path:
        return Path(spec.auth.token_path).expanduser()
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
    return Path.home() / ".ray" / "auth_token"


def auth_env(spec: ClusterSpec | None) -> dict[str, str]:
    """Environment variables that make Ray clients (and `ray start`) use token auth."""
    if spec is not None and spec.auth.mode == "disabled":
        return {"RAY_AUTH_MODE": "disabled"}
    env = {"RAY_AUTH_MODE": "token"}
    if spec is not None and spec.auth.token_path:
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path(spec))
    return env


def apply_auth_env(spec: ClusterSpec | None) -> None:
    """Sets the auth environment in this process (before any Ray client is created)."""
    env = auth_env(spec)
    if os.environ.get("RAY_AUTH_TOKEN") and env["RAY_AUTH_MODE"] == "token":
        env.pop("RAY_AUTH_TOKEN_PATH", None)  # an explicit token in the env wins, as in Ray
    os.environ.update(env)


def ensure_token(spec: ClusterSpec) -> Path | None:
    """Creates the token with Ray's own generator if token auth is on and none exists."""
    if spec.auth.mode != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = token_path(spec)
    if path.is_file() and path.read_text().strip():
        return path
    env = dict(os.environ, **auth_env(spec))
    ray_bin = Path(sys.executable).with_name("ray")
    proc = subprocess.run([str(ray_bin), "get-auth-token", "--generate"], env=env,
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 or not path.is_file():
        raise ClusterError(f"could not create a Ray auth token at {path}: {proc.stderr.strip()[-300:]}")
    path.chmod(0o600)
    return path


def bearer_header(spec: ClusterSpec | None) -> dict[str, str]:
    """The Authorization header for raw HTTP calls to the dashboard/Jobs API."""
    if spec is not None and spec.auth.mode == "disabled":
        return {}
    tok = os.environ.get("RAY_AUTH_TOKEN")
    if not tok:
        p = token_path(spec)
        if not p.is_file():
            raise ClusterError(f"no Ray auth token at {p}; run `rayworks up` (it creates one) or copy the "
                               "cluster's token there (`ray get-auth-token` on the head)")
        tok = p.read_text().strip()
    return {"Authorization": f"Bearer {tok}"}
