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

from rayworks.config.cluster import ClusterSpec, is_loopback_host
from rayworks.errors import ClusterError


def token_path(spec: ClusterSpec | None) -> Path:
    if spec is not None and spec.auth.token_path:
        return Path(spec.auth.token_path).expanduser()
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
    return Path.home() / ".ray" / "auth_token"


# Ray's one-machine mode: the node's address is 127.0.0.1 (so its ports bind to loopback) and a
# driver resolves `127.0.0.1:<gcs port>` to 127.0.0.1 instead of the machine's address. The
# local head and every client of a local cluster need it (rayworks.cluster.local).
LOCAL_NODE_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def auth_env(spec: ClusterSpec | None) -> dict[str, str]:
    """Environment variables that make Ray clients (and `ray start`) use token auth.

    For a local spec also :data:`LOCAL_NODE_ENV`, which a driver connecting with
    ``ray.init(address="127.0.0.1:<gcs port>")`` needs to reach a head bound to loopback.
    """
    env = {"RAY_AUTH_MODE": "disabled" if spec is not None and spec.auth.mode == "disabled" else "token"}
    if spec is not None and spec.provider.type == "local":
        env.update(LOCAL_NODE_ENV)
    if env["RAY_AUTH_MODE"] == "token" and spec is not None and spec.auth.token_path:
        env["RAY_AUTH_TOKEN_PATH"] = str(token_path(spec))
    return env


def apply_auth_env(spec: ClusterSpec | None) -> None:
    """Sets the auth environment in this process (before any Ray client is created)."""
    env = auth_env(spec)
    if os.environ.get("RAY_AUTH_TOKEN") and env["RAY_AUTH_MODE"] == "token":
        env.pop("RAY_AUTH_TOKEN_PATH", None)  # an explicit token in the env wins, as in Ray
    os.environ.update(env)
    consts = sys.modules.get("ray._private.ray_constants")
    if consts is not None and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in env:
        # Ray read the variable when it was imported; its address resolution reads this attribute.
        consts.ENABLE_RAY_CLUSTER = False


def ensure_token(spec: ClusterSpec) -> Path | None:
    """Creates the token with Ray's own generator if token auth is on and none exists."""
    if spec.auth.mode != "token" or os.environ.get("RAY_AUTH_TOKEN"):
        return None
    path = token_path(spec)
    if path.is_file() and path.read_text().strip():
        return path
    # Ray's generator writes only to its default place (~/.ray/auth_token) and refuses a
    # RAY_AUTH_TOKEN_PATH that does not exist yet: let it write under a private temporary
    # HOME, then move the token to the spec's path (0600, folder 0700).
    import tempfile

    ray_bin = Path(sys.executable).with_name("ray")
    with tempfile.TemporaryDirectory(prefix="rayworks-token-") as home:
        env = {k: v for k, v in dict(os.environ, **auth_env(spec)).items()
               if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")}
        env["HOME"] = home
        proc = subprocess.run([str(ray_bin), "get-auth-token", "--generate"], env=env,
                              capture_output=True, text=True, timeout=60)
        made = Path(home) / ".ray" / "auth_token"
        if proc.returncode != 0 or not made.is_file() or not made.read_text().strip():
            raise ClusterError(f"could not create a Ray auth token for {path}: {proc.stderr.strip()[-300:]}")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(made.read_text().strip() + "\n")
        os.replace(tmp, path)
    return path


def listener_uids(port: int) -> set[int] | None:
    """Owners (uids) of the sockets listening on ``port`` on loopback or all interfaces; None off Linux.

    /proc/net/tcp{,6} lists every socket of the machine with its owner, readable by anyone.
    """
    tables = [Path("/proc/net/tcp"), Path("/proc/net/tcp6")]
    if not tables[0].is_file():
        return None
    local = {"0100007F", "00000000", "00000000000000000000000000000000", "00000000000000000000000001000000",
             "0000000000000000FFFF00000100007F"}
    uids = set()
    for t in tables:
        try:
            lines = t.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            ip, _, hexport = f[1].partition(":")
            if f[3] == "0A" and int(hexport, 16) == port and ip.upper() in local:
                uids.add(int(f[7]))
    return uids


class DashboardDown(ClusterError):
    """Nothing accepts connections on the dashboard URL (the cluster is not running)."""


# URLs verified in this process (see verify_url's ``cached``): the check costs an HTTP round trip
# and, on loopback, a scan of /proc/net; `rayworks up`/`down` forget the URL of their cluster.
_VERIFIED: set[str] = set()


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is localhost or a loopback address."""
    from urllib.parse import urlparse

    return is_loopback_host(urlparse(url).hostname or "")


def forget_verified(url: str) -> None:
    """Drops ``url`` from the per-process cache (its listener changed: a cluster went up or down)."""
    _VERIFIED.discard(url.rstrip("/"))


def verify_url(url: str, timeout_s: float = 3.0, cached: bool = False) -> None:
    """Checks that the dashboard at ``url`` is this user's Ray before any token goes there.

    Whatever listens on the dashboard port would otherwise receive the cluster token (which
    lets it run code on the cluster). On loopback, the listening socket must belong to this
    user (another local user cannot squat the port and harvest it; a process of this user can
    read the token file anyway); and the server must answer Ray's unauthenticated
    ``/api/authentication_mode`` like Ray does. A remote host is only checked for the latter:
    the token then crosses the network, which needs TLS or a tunnel (README, Security defaults).

    Args:
        url: the dashboard / Jobs API base URL.
        timeout_s: for the HTTP check.
        cached: skip the check when ``url`` already passed it in this process.

    Raises:
        DashboardDown: nothing listens there.
        ClusterError: the listener belongs to another user, or it is not Ray.
    """
    from urllib.parse import urlparse

    import requests

    url = url.rstrip("/")
    if cached and url in _VERIFIED:
        return
    _VERIFIED.discard(url)
    port = urlparse(url).port or (443 if url.startswith("https:") else 80)
    if is_loopback_url(url):
        uids = listener_uids(port)
        if uids is not None and not uids:
            raise DashboardDown(f"nothing listens on {url}: is the cluster running (`rayworks up`, `rayworks status`)?")
        if uids and uids != {os.getuid()}:
            raise ClusterError(f"the process listening on {url} belongs to another user (uid {sorted(uids)}); "
                               "not sending the cluster token. Change dashboard.port in the spec")
    try:
        r = requests.get(f"{url}/api/authentication_mode", timeout=timeout_s)
        mode = r.json().get("authentication_mode") if r.status_code == 200 else None
    except requests.exceptions.SSLError:
        mode = None  # something answers, in a way Ray's dashboard does not
    except requests.ConnectionError:
        raise DashboardDown(f"nothing accepts connections on {url}: is the cluster running "
                            "(`rayworks up`, `rayworks status`)?") from None
    except (requests.RequestException, ValueError, AttributeError):
        mode = None
    if mode is None:
        raise ClusterError(f"{url} does not answer like a Ray dashboard; not sending the cluster "
                           "token. Is another program on that port? Change dashboard.port in the spec")
    _VERIFIED.add(url)


def verify_dashboard(spec: ClusterSpec, timeout_s: float = 3.0, cached: bool = False) -> None:
    """:func:`verify_url` for the spec's dashboard."""
    verify_url(spec.dashboard_url, timeout_s, cached)


def bearer_header(spec: ClusterSpec | None, verify: bool = True) -> dict[str, str]:
    """The Authorization header for raw HTTP calls to the dashboard/Jobs API.

    Args:
        spec: the cluster spec (None: Ray's defaults).
        verify: first check that the spec's dashboard is this user's Ray (:func:`verify_dashboard`;
            once per URL and process).
    """
    if spec is not None and spec.auth.mode == "disabled":
        return {}
    if verify and spec is not None:
        verify_dashboard(spec, cached=True)
    tok = os.environ.get("RAY_AUTH_TOKEN")
    if not tok:
        p = token_path(spec)
        if not p.is_file():
            raise ClusterError(f"no Ray auth token at {p}; run `rayworks up` (it creates one) or copy the "
                               "cluster's token there (`ray get-auth-token` on the head)")
        tok = p.read_text().strip()
    return {"Authorization": f"Bearer {tok}"}
