"""One check for every place environment variables enter a job or a pod.

Env vars in a cluster spec or a job config end up in files: rendered manifests, the
job's ``runtime_env`` (which the Jobs API returns and Ray's agents log under the session
directory) and pod specs. A secret there is a secret in plain text. :func:`check_env_vars`
refuses names that look like secrets (``HF_TOKEN``, ``AWS_SECRET_ACCESS_KEY``,
``*_PASSWORD``, ``*_KEY``...) and values that look like credentials (API-key prefixes of
well-known providers, ``user:password@`` inside a URI), and points at
``runtime_env.secret_env_vars``, which passes a secret by name from the submitting shell.

It is deliberately conservative on names (a false positive costs a rename or a move to
``secret_env_vars``; a false negative leaks a credential), and precise on values (only
shapes that real credentials have).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

# Name parts that mark a secret: FOO_TOKEN, HF_TOKEN, AWS_SECRET_ACCESS_KEY, DB_PASSWORD, API_KEY...
_SECRET_NAME = re.compile(
    r"(^|_)(TOKEN|SECRET|SECRETS|PASSWORD|PASSWD|PWD|PASS|KEY|APIKEY|API_KEY|ACCESS_KEY|PRIVATE_KEY|"
    r"CREDENTIAL|CREDENTIALS|AUTH|COOKIE|SESSION_KEY|SIGNING_KEY|CLIENT_SECRET)(_|$)", re.I)
# Names that match the pattern above but are known not to hold secrets.
_NOT_SECRET_NAMES = frozenset({"RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "PWD"})
# Value prefixes of real credentials: OpenAI/Anthropic (sk-), Hugging Face (hf_), AWS access
# key ids (AKIA/ASIA + 16), GitHub (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_), GitLab (glpat-),
# Slack (xox?-), Google API keys (AIza), Stripe (rk_live_/sk_live_), and PEM private keys.
_SECRET_VALUE = re.compile(
    r"^\s*(sk-[A-Za-z0-9_-]{8,}|sk_(live|test)_[A-Za-z0-9]{8,}|rk_live_[A-Za-z0-9]{8,}|hf_[A-Za-z0-9]{8,}|"
    r"(AKIA|ASIA)[A-Z0-9]{16}|gh[pousr]_[A-Za-z0-9]{16,}|github_pat_[A-Za-z0-9_]{16,}|glpat-[A-Za-z0-9_-]{16,}|"
    r"xox[abposr]-[A-Za-z0-9-]{8,}|AIza[0-9A-Za-z_-]{30,}|-----BEGIN [A-Z ]*PRIVATE KEY-----)")
_URI_WITH_PASSWORD = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@")
_VALID_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HINT = ("list its name under runtime_env.secret_env_vars instead (the value is then taken from the "
        "submitting shell and never written to a file)")


def secret_name(name: str) -> bool:
    """True when ``name`` looks like it holds a secret."""
    return name.upper() not in _NOT_SECRET_NAMES and bool(_SECRET_NAME.search(name))


def secret_value(value: str) -> str | None:
    """What makes ``value`` look like a credential, or None."""
    if _SECRET_VALUE.search(value):
        return "looks like an API key or private key"
    if _URI_WITH_PASSWORD.search(value):
        return "holds a password inside a URI (user:password@host)"
    try:
        if urlsplit(value.strip()).password:
            return "holds a password inside a URI (user:password@host)"
    except ValueError:
        pass
    return None


def env_var_problem(name: str, value: str, where: str) -> str | None:
    """The one-line error for one env var, or None when it may be written to a file.

    Args:
        name: the variable's name.
        value: its value.
        where: the config path of the mapping, e.g. ``runtime_env.env_vars``.
    """
    if not _VALID_NAME.match(name):
        return f"{where}.{name}: not a valid environment variable name; use letters, digits and '_'"
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
