"""One check for every place environment variables enter a job or a pod.

Env vars in a cluster spec or a job config end up in files: rendered manifests, the
job's ``runtime_env`` (which the Jobs API returns and Ray's agents log under the session
directory) and pod specs. A secret there is a secret in plain text. :func:`check_env_vars`
refuses names that look like secrets (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``,
``*_PASSWORD``, ``*_KEY``...) and values that look like credentials (API-key prefixes of
well-known providers, JWTs, ``Bearer ...``, signed-URL query strings, ``user:password@``
inside a URI), and points at ``runtime_env.secret_env_vars``, which passes a secret by name
from the submitting shell.

It also refuses the settings rayworks derives from the cluster spec (:data:`OWNED`): an env
var there would silently override the spec (``RAY_AUTH_MODE=disabled`` starts a head without
auth while ``auth.mode`` still reads ``token``), so the error names the spec field to use.

It is deliberately conservative on names (a false positive costs a rename or a move to
``secret_env_vars``; a false negative leaks a credential), and precise on values (only
shapes that real credentials have).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

# Name parts that mark a secret: FOO_TOKEN, HF_TOKEN, AWS_SECRET_ACCESS_KEY, DB_PASSWORD, API_KEY...
_SECRET_NAME = re.compile(
    r"(^|_)(TOKEN|SECRET|SECRETS|PASSWORD|PASSWD|PWD|PASS|KEY|APIKEY|API_KEY|ACCESS_KEY|PRIVATE_KEY|"
    r"CREDENTIAL|CREDENTIALS|AUTH|COOKIE|SESSION_KEY|SIGNING_KEY|CLIENT_SECRET)(_|$)", re.I)
# Names that match the pattern above but are known not to hold secrets.
_NOT_SECRET_NAMES = frozenset({"RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "PWD"})
# Settings rayworks sets from the cluster spec on every head, node and client: name -> spec field.
OWNED = {
    "RAY_AUTH_MODE": "auth.mode", "RAY_AUTH_TOKEN_PATH": "auth.token_path",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "provider.type (a local head always binds to loopback)",
    "RAY_SERVE_ENABLE_HA_PROXY": "serve.ha_proxy", "RAY_SERVE_HAPROXY_STATS_PORT": "serve.haproxy_stats_port",
    "RAY_SERVE_HAPROXY_METRICS_PORT": "serve.haproxy_metrics_port",
    "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": "serve.fallback_proxy_port",
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "serve.replica_drain_s",
    "RAY_PROMETHEUS_HOST": "metrics.prometheus_url", "RAY_GRAFANA_HOST": "metrics.grafana_url",
}
# Every other RAY_AUTH_* (RAY_AUTH_TOKEN, future auth switches) belongs to the spec's auth section too.
_OWNED_PREFIX = ("RAY_AUTH_", "auth.mode and auth.token_path (the token itself stays in its file)")
# Value prefixes of real credentials: OpenAI/Anthropic (sk-), Hugging Face (hf_), AWS access
# key ids (AKIA/ASIA + 16), GitHub (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_), GitLab (glpat-),
# Slack (xox?-), Google API keys (AIza), Stripe (rk_live_/sk_live_), and PEM private keys.
_SECRET_VALUE = re.compile(
    r"^\s*(sk-[A-Za-z0-9_-]{8,}|sk_(live|test)_[A-Za-z0-9]{8,}|rk_live_[A-Za-z0-9]{8,}|hf_[A-Za-z0-9]{8,}|"
    r"(AKIA|ASIA)[A-Z0-9]{16}|gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,}|glpat-[A-Za-z0-9_-]{16,}|"
    r"xox[abposr]-[A-Za-z0-9-]{8,}|AIza[0-9A-Za-z_-]{30,}|-----BEGIN [A-Z ]*PRIVATE KEY-----)")
# JSON Web Tokens (base64url header starting `{"`, payload, signature).
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")
# An HTTP credential as an Authorization header carries it (RFC 6750 bearer, RFC 7617 basic).
_BEARER = re.compile(r"\bBearer\s+[A-Za-z0-9._~+/-]{16,}=*")
_BASIC = re.compile(r"^\s*Basic\s+([A-Za-z0-9+/]{4,}={0,2})\s*$", re.I)
# Query parameters of pre-signed URLs (S3 SigV4/V2, GCS V4/V2, Azure SAS): the URL is the credential.
_SIGNED_QUERY = re.compile(
    r"[?&](X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|X-Goog-Signature|X-Goog-Credential|"
    r"Signature|sig|AWSAccessKeyId|GoogleAccessId)=", re.I)
_URI_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")
_VALID_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HINT = ("list its name under runtime_env.secret_env_vars instead (the value is then taken from the "
        "submitting shell and never written to a file)")


def secret_name(name: str) -> bool:
    """True when ``name`` looks like it holds a secret."""
    return name.upper() not in _NOT_SECRET_NAMES and bool(_SECRET_NAME.search(name))


def _basic_credential(value: str) -> bool:
    """``Basic <base64 of user:password>``; "Basic authentication" and the like are prose, not one."""
    m = _BASIC.match(value)
    if not m:
        return False
    try:
        return b":" in base64.b64decode(m.group(1), validate=True)
    except (binascii.Error, ValueError):
        return False


def secret_value(value: str) -> str | None:
    """What makes ``value`` look like a credential, or None."""
    if _SECRET_VALUE.search(value):
        return "looks like an API key or private key"
    if _JWT.search(value):
        return "looks like a JSON Web Token"
    if _BEARER.search(value) or _basic_credential(value):
        return "looks like an HTTP credential (Bearer/Basic ...)"
    if _SIGNED_QUERY.search(value):
        return "looks like a pre-signed URL (its signature query parameter is a credential)"
    if _URI_WITH_PASSWORD.search(value):
        return "holds a password inside a URI (user:password@host)"
    try:
        if urlsplit(value.strip()).password:
            return "holds a password inside a URI (user:password@host)"
    except ValueError:
        pass
    return None


def owned_field(name: str) -> str | None:
    """The spec field that sets ``name`` when rayworks owns that setting, else None."""
    up = name.upper()
    if up in OWNED:
        return OWNED[up]
    return _OWNED_PREFIX[1] if up.startswith(_OWNED_PREFIX[0]) else None


def env_var_problem(name: str, value: str, where: str) -> str | None:
    """The one-line error for one env var, or None when it may be written to a file.

    Args:
        name: the variable's name.
        value: its value.
        where: the config path of the mapping, e.g. ``runtime_env.env_vars``.
    """
    if not _VALID_NAME.match(name):
        return f"{where}.{name}: not a valid environment variable name; use letters, digits and '_'"
    field = owned_field(name)
    if field:
        return (f"{where}.{name}: rayworks sets {name} itself from the cluster spec ({field}); "
                f"use the spec field and remove {name} from {where}")
    if secret_name(name):
        return f"{where}.{name} looks like a secret; {HINT}"
    why = secret_value(value)
    if why:
        return f"{where}.{name}: the value {why}; {HINT}"
    return None


def check_env_vars(env: Mapping[str, str], where: str) -> None:
    """Raises ValueError (pydantic turns it into a ConfigError at load) for the first bad env var."""
    for name, value in env.items():
        problem = env_var_problem(name, value, where)
        if problem:
            raise ValueError(problem)


def check_secret_names(names: list[str], where: str) -> None:
    """Names under ``secret_env_vars`` must be valid env var names (they reach shells and pod specs)."""
    for n in names:
        if not _VALID_NAME.match(n):
            raise ValueError(f"{where}: {n!r} is not a valid environment variable name; use letters, digits and '_'")
