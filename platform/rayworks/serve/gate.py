"""The gate in front of the OpenAI API: deny by default, bearer-key auth, request validation.

A pure ASGI middleware, so the same code guards Ray Serve LLM's OpenAI ingress and,
with direct streaming, vLLM's own app inside the engine replica. It runs before any
routing and denies by default: every HTTP and websocket request on every path needs a
valid key, except the paths in :data:`OPEN_PATHS` (``GET``/``HEAD /health``). A request
without a valid key gets 401 and never reaches a handler (vLLM's app alone has
``/invocations``, ``/tokenize``, ``/scale_elastic_ep``, ``/metrics``, ``/docs``, ...; a
route a future vLLM adds is closed too). A malformed or out-of-range completions/chat
request gets a 4xx with a message naming the field (vLLM and Ray would otherwise answer
some of these with 422 or 500, or queue them). ``GET /v1/models`` answers with each
model's ``root`` set to its id: vLLM would put the server's model path there.

Keys come from an environment variable (comma-separated) or a file (one per line),
read inside the replica, or as sha256 digests the serve job computed from its own
environment; they are compared as sha256 digests in constant time and never logged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
from pathlib import Path
from typing import Any

# The only requests answered without a key: liveness probes (load balancers, KubeRay, `rayworks
# serve status`) cannot carry one, and /health tells nothing but "ok" and the model ids.
# README's "Security defaults" lists exactly these; tests/unit/test_serve_routes.py checks both.
OPEN_PATHS: frozenset[str] = frozenset({"/health"})
OPEN_METHODS: frozenset[str] = frozenset({"GET", "HEAD"})
MODELS_PATH = "/v1/models"
MAX_BODY_BYTES = 16 * 1024 * 1024

# Ranges of OpenAI's API reference (vLLM extensions where OpenAI has none).
_RANGES: dict[str, tuple[float, float, bool]] = {  # name -> (low, high, integer?)
    "temperature": (0.0, 2.0, False),
    "top_p": (0.0, 1.0, False),
    "presence_penalty": (-2.0, 2.0, False),
    "frequency_penalty": (-2.0, 2.0, False),
    "repetition_penalty": (0.01, 10.0, False),
    "min_p": (0.0, 1.0, False),
    "top_k": (-1, 1_000_000, True),
    "n": (1, 16, True),
    "best_of": (1, 16, True),
    "top_logprobs": (0, 20, True),
    "min_tokens": (0, 1_000_000, True),
}


class RequestError(Exception):
    """A client error: HTTP status and an OpenAI-style message."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind

    def body(self) -> bytes:
        return json.dumps({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                     "code": self.status}}).encode()


def _digest(key: str) -> bytes:
    """The sha256 of a key, surrounding whitespace dropped: the only form a key is kept in."""
    return hashlib.sha256(key.strip().encode()).digest()


def key_digests(value: str) -> list[str]:
    """sha256 hex digests of a comma-separated key list (what an api_keys_env variable holds)."""
    return [_digest(k).hex() for k in value.split(",") if k.strip()]


def load_keys(api_keys_env: str | None, api_keys_file: str | None,
              api_key_sha256: list[str] | None = None) -> list[bytes]:
    """sha256 digests of the configured keys; raises if keys are configured but none are found.

    Args:
        api_keys_env: env var with comma-separated keys, read in this process if set here.
        api_keys_file: file with one key per line, read on this node.
        api_key_sha256: hex digests the serve job computed from ``api_keys_env`` in its own
            environment (a Serve replica does not always inherit the job's env vars, and a
            digest can travel in the deployment config where the key itself must not).
    """
    hexes = set(api_key_sha256 or [])
    if api_keys_env:
        hexes |= set(key_digests(os.environ.get(api_keys_env, "")))
    if api_keys_file:
        p = Path(api_keys_file)
        if p.is_file():
            hexes |= {_digest(ln).hex() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    digests = {bytes.fromhex(h) for h in hexes}
    if (api_keys_env or api_keys_file) and not digests:
        where = " or ".join(x for x in [f"env var {api_keys_env}" if api_keys_env else "",
                                        f"file {api_keys_file}" if api_keys_file else ""] if x)
        # Refuse to start open: serving without the configured auth would expose the API.
        raise RuntimeError(f"rayworks serve: API auth is configured but no key was found in {where} on this node")
    return sorted(digests)


def check_key(authorization: str | None, digests: list[bytes]) -> str | None:
    """None if the header carries a valid key, else the reason ('missing' or 'invalid')."""
    if not authorization:
        return "missing"
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return "missing"
    d = _digest(value)
    ok = False
    for k in digests:  # no early exit: constant time in the number of keys
        ok |= secrets.compare_digest(d, k)
    return None if ok else "invalid"


def _number(name: str, v: Any, low: float, high: float, integer: bool) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not float(v).is_integer()):
        raise RequestError(400, f"'{name}' must be {'an integer' if integer else 'a number'}, got {v!r}", name)
    if not math.isfinite(v) or not low <= v <= high:
        raise RequestError(400, f"'{name}' must be between {low:g} and {high:g}, got {v!r}", name)


def validate(endpoint: str, data: Any, models: dict[str, int]) -> None:
    """Checks a completions/chat body; raises RequestError with the status to send.

    Args:
        endpoint: "completions" or "chat".
        data: the parsed JSON body.
        models: model id -> max_model_len of every served model.
    """
    if not isinstance(data, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(data).__name__}")
    model = data.get("model")
    if model is None:
        if len(models) != 1:
            raise RequestError(400, f"'model' is required; available models: {sorted(models)}", "model")
        model = next(iter(models))
    if not isinstance(model, str):
        raise RequestError(400, f"'model' must be a string, got {model!r}", "model")
    if model not in models:
        raise RequestError(404, f"model {model!r} does not exist; available models: {sorted(models)}",
                           "model", "not_found_error")
    if endpoint == "completions":
        prompt = data.get("prompt")
        if prompt is None:
            raise RequestError(400, "'prompt' is required", "prompt")
        ok = isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(
            isinstance(p, (str, int)) or (isinstance(p, list) and all(isinstance(t, int) for t in p)) for p in prompt))
        if not ok:
            raise RequestError(400, "'prompt' must be a string, a list of strings or a list of token ids", "prompt")
    else:
        msgs = data.get("messages")
        if msgs is None:
            raise RequestError(400, "'messages' is required", "messages")
        if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m for m in msgs):
            raise RequestError(400, "'messages' must be a non-empty list of {role, content} objects", "messages")
    ctx = models[model]
    for name in ("max_tokens", "max_completion_tokens"):
        v = data.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int):
            raise RequestError(400, f"'{name}' must be an integer, got {v!r}", name)
        if v <= 0:
            raise RequestError(400, f"'{name}' must be at least 1, got {v}", name)
        if v >= ctx:
            raise RequestError(400, f"'{name}' is {v} but model {model!r} has a context length of {ctx} tokens "
                                    f"(prompt + {name} must fit in it)", name)
    for name, (low, high, integer) in _RANGES.items():
        if data.get(name) is not None:
            _number(name, data[name], low, high, integer)
    if "stream" in data and not isinstance(data["stream"], (bool, type(None))):
        raise RequestError(400, f"'stream' must be true or false, got {data['stream']!r}", "stream")


def is_open(scope_type: str, method: str | None, path: str) -> bool:
    """Whether a request may pass without a key: only GET/HEAD on an OPEN_PATHS path (exact)."""
    return scope_type == "http" and method in OPEN_METHODS and path in OPEN_PATHS


def scrub_models(body: bytes) -> bytes:
    """A /v1/models (or /v1/models/{id}) JSON body with each card's ``root`` set to its id.

    vLLM reports the path it loaded the model from (a server-side absolute path, or a
    LoRA adapter's) as ``root``; clients need only the id. Anything not a model card or
    list is returned unchanged (e.g. an error body).
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    cards = data.get("data") if isinstance(data, dict) and data.get("object") == "list" else [data]
    changed = False
    for c in cards if isinstance(cards, list) else []:
        if isinstance(c, dict) and "root" in c and "id" in c and c["root"] != c["id"]:
            c["root"] = c["id"]
            changed = True
    return json.dumps(data).encode() if changed else body


class Gate:
    """ASGI middleware: auth on every request but OPEN_PATHS, validation on completions and chat."""

    def __init__(self, app, *, api_keys_env: str | None = None, api_keys_file: str | None = None,
                 api_key_sha256: list[str] | None = None, models: dict[str, int] | None = None,
                 run: str = "serve"):
        self.app = app
        self.digests = load_keys(api_keys_env, api_keys_file, api_key_sha256)
        self.auth = bool(api_keys_env or api_keys_file)
        self.models = dict(models or {})
        self.run = run

    def _count(self, what: str, **tags: str) -> None:
        try:
            from rayworks import metrics

            if what == "auth":
                m = metrics.counter("rayworks_serve_auth_rejections_total",
                                    "Requests refused with 401 by the API-key gate.", ("reason",))
            else:
                m = metrics.counter("rayworks_serve_rejected_requests_total",
                                    "Requests refused with a 4xx by request validation.", ("code",))
            m.inc(1, tags=metrics.tags("serve", self.run, **tags))
        except Exception:  # noqa: BLE001 - metrics must never fail a request (e.g. outside Ray in tests)
            pass

    async def _send_error(self, send, err: RequestError, headers: list | None = None) -> None:
        body = err.body()
        await send({"type": "http.response.start", "status": err.status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    async def _deny_websocket(self, scope, receive, send, msg: str) -> None:
        """Refuses a websocket before it is accepted.

        With the ASGI "websocket.http.response" extension (uvicorn, which serves Ray's proxies
        and replicas, and starlette's TestClient offer it) the client gets a plain HTTP 401 with
        the JSON error; a server without it gets a close with 1008 (policy violation), which
        the server turns into a refused handshake (403).
        """
        first = await receive()  # websocket.connect: the handshake is waiting on our answer
        if first.get("type") != "websocket.connect":
            return
        if "websocket.http.response" in (scope.get("extensions") or {}):
            body = RequestError(401, msg, kind="authentication_error").body()
            await send({"type": "websocket.http.response.start", "status": 401,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()),
                                    (b"www-authenticate", b"Bearer")]})
            await send({"type": "websocket.http.response.body", "body": body})
        else:
            await send({"type": "websocket.close", "code": 1008, "reason": msg[:120]})

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind not in ("http", "websocket"):  # lifespan: app start-up, not a request
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        method = scope.get("method") if kind == "http" else None
        if self.auth and not is_open(kind, method, path):
            hdr = dict(scope.get("headers") or []).get(b"authorization")
            reason = check_key(hdr.decode("latin-1") if hdr else None, self.digests)
            if reason:
                self._count("auth", reason=reason)
                msg = "missing API key: send 'Authorization: Bearer <key>'" if reason == "missing" else "invalid API key"
                if kind == "websocket":
                    return await self._deny_websocket(scope, receive, send, msg)
                return await self._send_error(send, RequestError(401, msg, kind="authentication_error"),
                                              [(b"www-authenticate", b"Bearer")])
        if kind == "websocket":
            return await self.app(scope, receive, send)
        if method == "GET" and (path.rstrip("/") == MODELS_PATH or path.startswith(MODELS_PATH + "/")):
            return await self.app(scope, receive, _scrubbing(send))
        endpoint = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}.get(path.rstrip("/"))
        if endpoint is None or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > MAX_BODY_BYTES:
                self._count("reject", code="413")
                return await self._send_error(send, RequestError(413, f"request body over {MAX_BODY_BYTES} bytes"))
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        try:
            try:
                data = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequestError(400, f"malformed JSON body: {exc}") from None
            validate(endpoint, data, self.models)
        except RequestError as err:
            self._count("reject", code=str(err.status))
            return await self._send_error(send, err)

        return await self.app(scope, replay_body(body, receive), send)


def replay_body(body: bytes, receive):
    """A receive that hands the app a request body already read (once), then the real receive."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def rewriting_send(send, rewrite):
    """A send that buffers the response body and sends ``rewrite(status, body)`` with its length."""
    start: dict | None = None
    chunks: list[bytes] = []

    async def wrapped(msg):
        nonlocal start
        if msg["type"] == "http.response.start":
            start = msg
            return None
        if msg["type"] != "http.response.body" or start is None:
            return await send(msg)
        chunks.append(msg.get("body", b""))
        if msg.get("more_body"):
            return None
        body = rewrite(start["status"], b"".join(chunks))
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({**start, "headers": headers})
        return await send({"type": "http.response.body", "body": body})

    return wrapped


def _scrubbing(send):
    """A send that buffers a JSON response and passes it through :func:`scrub_models`."""
    return rewriting_send(send, lambda _status, body: scrub_models(body))
