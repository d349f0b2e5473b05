"""The cluster spec's ``tracking:`` section: where runs, metrics and registered models go (MLflow).

Two ways, one field apart:

- ``uri`` unset (the default, local specs only): rayworks runs MLflow's own server
  (``rayworks tracking up``, also run by ``rayworks up``) with a SQLite backend store and an
  artifact root under the spec's storage, bound to ``host`` (127.0.0.1) on ``port``;
- ``uri: https://mlflow.example.com`` (any spec): an MLflow server someone else runs.

A server that anyone but this machine can reach must demand a login: binding ``host``
off loopback, or an external ``uri`` over plain http off loopback, needs MLflow's
credentials delivered to jobs as sealed secrets (``runtime_env.secret_env_vars`` names
``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``; rayworks.secrets), and a
self-run server then turns on MLflow's basic-auth app.
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import Field, model_validator

from rayworks.config.base import StrictModel, is_loopback_host

USER_VAR = "MLFLOW_TRACKING_USERNAME"   # MLflow's client reads these two itself
PASSWORD_VAR = "MLFLOW_TRACKING_PASSWORD"
_URI = r"^https?://[A-Za-z0-9.\[\]:-]+(/[A-Za-z0-9._~/%-]*)?$"
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?$")


class Tracking(StrictModel):
    """Experiment tracking and the model registry (MLflow)."""

    enabled: bool = Field(True, description="Log runs, metrics and model versions to MLflow. false: no job "
                                            "contacts a tracking server.")
    uri: str | None = Field(None, pattern=_URI, description="An external MLflow tracking URI (http(s)://HOST[:PORT]). "
                                                            "Unset: the server rayworks runs (local specs only).")
    host: str = Field("127.0.0.1", description="Bind address of the server rayworks runs. Off loopback it needs "
                                               "basic auth (credentials as sealed secrets); reach the UI by an SSH "
                                               "tunnel or port-forward instead.")
    port: int = Field(5000, ge=1, le=65535, description="Port of the server rayworks runs.")
    workers: int = Field(1, ge=1, le=16, description="Server worker processes (SQLite takes one writer at a time).")
    experiment: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._/-]{0,127}$",
                                   description="MLflow experiment every run goes to; default: rayworks-<cluster "
                                               "name>.")
    request_timeout_s: float = Field(10, gt=0, le=300, description="Per-request timeout of a job's MLflow calls: "
                                                                   "a hung server delays a training step by at most "
                                                                   "this, once per retry_after_s.")
    retry_after_s: float = Field(30, ge=0, le=3600, description="After a failed call, skip (and count) logs for this "
                                                                "long before trying the server again.")

    @model_validator(mode="after")
    def _check(self) -> "Tracking":
        if not is_loopback_host(self.host):
            try:
                ipaddress.ip_address(self.host)
            except ValueError:
                if not _HOST.match(self.host):
                    raise ValueError(f"tracking.host={self.host!r} is not an IP address or host name") from None
        return self

    def needs_credentials(self) -> bool:
        """True when the server is reachable from other machines, so it must demand a login."""
        if self.uri:
            host = re.sub(r"^https?://", "", self.uri).split("/")[0].rsplit(":", 1)[0].strip("[]")
            return self.uri.startswith("http://") and not is_loopback_host(host)
        return not is_loopback_host(self.host)

    def client_uri(self, provider: str = "local") -> str | None:
        """The URI clients (jobs, the CLI) use: the external one, the local server's over loopback, or None.

        None (tracking off) when disabled, or on a cloud/KubeRay spec without ``uri``: rayworks runs a
        server itself only beside a local cluster, and a cloud spec's jobs must not look for one on
        their own node.
        """
        if not self.enabled or (self.uri is None and provider != "local"):
            return None
        if self.uri:
            return self.uri.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"


def check_tracking(tracking: Tracking, provider: str, secret_env_vars: list[str]) -> None:
    """Spec-level rules (called by the cluster spec's validator); ValueError names the fix."""
    if not tracking.enabled:
        return
    if tracking.needs_credentials():
        missing = [v for v in (USER_VAR, PASSWORD_VAR) if v not in secret_env_vars]
        if missing:
            where = f"tracking.host={tracking.host!r}" if not tracking.uri else f"tracking.uri={tracking.uri!r}"
            raise ValueError(f"{where} is reachable off this machine, so MLflow's basic auth must be on: add "
                             f"{missing} to runtime_env.secret_env_vars (they travel sealed), or bind 127.0.0.1")
