"""Secret env vars travel sealed: never in plain text in a job's runtime env.

A job's runtime env is public inside the cluster: the Jobs API returns it to anyone
who may list jobs, and Ray's runtime-env agent writes it into log files under the
session directory. So `runtime_env.secret_env_vars` values never go there. At submit
time each value is encrypted (AES-GCM, the variable's name bound as associated data)
with a key derived (HKDF-SHA256) from the cluster's Ray auth token, and the job's
runtime env carries only the ciphertexts in one variable, ``RAYWORKS_SEALED_ENV``.
Inside the cluster the values are opened in memory: by the job's driver at start
(:func:`unseal_env`, called by ``rayworks.jobmain``) and by every worker process
through Ray's ``worker_process_setup_hook``, which runs the same function before the
worker takes a task.

Why the auth token: every node and every Ray process already holds it (Ray needs it to
talk to the GCS), and whoever holds it can submit a job that reads any env var, so
anyone able to open the seal could already read the secret: sealing adds no new party
that must be trusted, and needs no key distribution of its own. A job submitted to a
cluster without token auth cannot be given secrets (there is nothing to seal with).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from rayworks.errors import ConfigError

SEALED_VAR = "RAYWORKS_SEALED_ENV"
HOOK = "rayworks.secrets.unseal_env"
_INFO = b"rayworks sealed env v1"


def cluster_token() -> str | None:
    """The Ray auth token this process would use, found the way Ray finds it."""
    if os.environ.get("RAY_AUTH_MODE", "token") == "disabled":
        return None
    tok = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if tok:
        return tok
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def _key(token: str) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(token.encode())


def _key_id(key: bytes) -> str:
    """A short fingerprint of the derived key: tells 'another cluster's token' from corruption."""
    return hashlib.sha256(b"key-id:" + key).hexdigest()[:16]


def seal(values: dict[str, str], token: str) -> str:
    """The sealed form of ``values`` (JSON text safe to put in a runtime env)."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = _key(token)
    box = AESGCM(key)
    out = {}
    for name, value in values.items():
        nonce = os.urandom(12)
        out[name] = base64.b64encode(nonce + box.encrypt(nonce, value.encode(), name.encode())).decode()
    return json.dumps({"v": 1, "kid": _key_id(key), "values": out}, sort_keys=True)


def unseal(sealed: str, token: str) -> dict[str, str]:
    """The plain values of a :func:`seal` result; raises ValueError if the token is not the sealer's."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    doc = json.loads(sealed)
    key = _key(token)
    if doc.get("v") != 1 or doc.get("kid") != _key_id(key):
        raise ValueError("the secrets were sealed with another cluster's auth token (or another rayworks "
                         "version); submit the job again with this cluster's token")
    box = AESGCM(key)
    values = {}
    for name, blob in doc["values"].items():
        raw = base64.b64decode(blob)
        try:
            values[name] = box.decrypt(raw[:12], raw[12:], name.encode()).decode()
        except InvalidTag:
            raise ValueError(f"sealed secret {name} does not open with this cluster's auth token "
                             "(tampered with, or sealed for another cluster)") from None
    return values


def sealed_runtime_env(names: list[str], environ: dict[str, str] | None = None) -> dict:
    """Runtime-env entries delivering ``names`` (read from ``environ``) sealed; {} when there are none.

    Call after the client's auth env is applied (``apply_auth_env``): the token is the
    cluster's. Raises ConfigError naming the fix when a value is missing or there is no token.
    """
    if not names:
        return {}
    environ = os.environ if environ is None else environ
    missing = [n for n in names if n not in environ]
    if missing:
        raise ConfigError(f"runtime_env.secret_env_vars names {missing} but they are not set in this shell; "
                          "export them before submitting")
    token = cluster_token()
    if not token:
        raise ConfigError("runtime_env.secret_env_vars needs the cluster's Ray auth token to seal the values "
                          "(auth.mode: token, and the token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                          "~/.ray/auth_token); secrets are never sent in plain text")
    return {"env_vars": {SEALED_VAR: seal({n: environ[n] for n in names}, token)},
            "worker_process_setup_hook": HOOK}


def unseal_env() -> None:
    """Opens ``RAYWORKS_SEALED_ENV`` into this process's environment (driver start and Ray's worker hook).

    The values live only in this process's memory (and its children's): a variable set
    after start does not appear in ``/proc/<pid>/environ``, and nothing is written or logged.
    """
    sealed = os.environ.pop(SEALED_VAR, None)
    if not sealed:
        return
    token = cluster_token()
    if not token:
        raise RuntimeError("this job carries sealed secrets but the process has no Ray auth token to open "
                           "them (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")
    os.environ.update(unseal(sealed, token))
