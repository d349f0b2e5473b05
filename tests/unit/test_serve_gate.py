"""The API gate (auth + validation) as a plain ASGI middleware, against a stub app."""

from __future__ import annotations

import asyncio
import json

import pytest

from rayworks.serve.gate import Gate, RequestError, check_key, load_keys, validate

MODELS = {"tiny": 256}


def call(gate: Gate, path: str, body: bytes | None = None, key: str | None = None, method: str = "POST"):
    """Runs one request through the gate; returns (status, json body, what the app saw)."""
    seen = {}

    async def app(scope, receive, send):
        msg = await receive()
        seen["body"] = msg.get("body")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    gate.app = app
    headers = [(b"content-type", b"application/json")]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": headers}
    sent = []
    chunks = [body or b""]

    async def receive():
        return {"type": "http.request", "body": chunks.pop(0) if chunks else b"", "more_body": False}

    async def send(msg):
        sent.append(msg)

    asyncio.run(gate(scope, receive, send))
    status = sent[0]["status"]
    return status, json.loads(sent[1]["body"]), seen


@pytest.fixture
def gate(monkeypatch):
    monkeypatch.setenv("RW_KEYS", "alpha, beta")
    return Gate(None, api_keys_env="RW_KEYS", models=MODELS, run="t")


def body(**kw) -> bytes:
    return json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 4, **kw}).encode()


def test_auth_missing_wrong_right(gate):
    assert call(gate, "/v1/models", method="GET")[0] == 401
    st, err, seen = call(gate, "/v1/completions", body(), key="nope")
    assert st == 401 and err["error"]["type"] == "authentication_error" and not seen
    assert call(gate, "/v1/models", key="beta", method="GET")[0] == 200
    st, _, seen = call(gate, "/v1/completions", body(), key="alpha")
    assert st == 200 and json.loads(seen["body"])["prompt"] == "hi"  # the body is replayed intact


def test_health_is_open(gate):
    assert call(gate, "/health", method="GET")[0] == 200
    assert call(gate, "/health", method="HEAD")[0] == 200


@pytest.mark.parametrize("method, path", [("POST", "/invocations"), ("POST", "/tokenize"), ("GET", "/metrics"),
                                          ("GET", "/ping"), ("GET", "/docs"), ("OPTIONS", "/v1/completions"),
                                          ("POST", "/health"), ("GET", "/health/"), ("GET", "/nothing/here")])
def test_deny_by_default_outside_v1(gate, method, path):
    """Every path but GET/HEAD /health needs the key, /v1 or not (vLLM's app has many more routes)."""
    st, err, seen = call(gate, path, b"{}", method=method)
    assert st == 401 and err["error"]["type"] == "authentication_error" and not seen
    assert call(gate, path, b"{}", key="alpha", method=method)[0] == 200


def test_route_prefix_is_stripped_before_the_allow_list(gate):
    """Serve passes the app's route prefix as root_path; /health under it is still the open path."""
    seen = {}

    async def app(scope, receive, send):
        seen["path"] = scope["path"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    gate.app = app
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        sent.append(msg)

    for path, status in (("/svc/health", 200), ("/svc/tokenize", 401), ("/health", 200)):
        sent.clear()
        scope = {"type": "http", "method": "GET", "path": path, "root_path": "/svc", "headers": []}
        asyncio.run(gate(scope, receive, send))
        assert sent[0]["status"] == status, path


def test_keys_configured_but_absent_refuses_to_start(monkeypatch, tmp_path):
    monkeypatch.delenv("RW_NONE", raising=False)
    with pytest.raises(RuntimeError, match="no key was found"):
        load_keys("RW_NONE", None)
    f = tmp_path / "keys"
    f.write_text("# comment\nk1\n\nk2\n")
    assert len(load_keys(None, str(f))) == 2
    assert check_key("Bearer k2", load_keys(None, str(f))) is None
    assert check_key("Basic k2", load_keys(None, str(f))) == "missing"


def test_job_passes_digests_not_keys(monkeypatch):
    """A replica without the key's env var still authenticates from the digests the job sent."""
    from rayworks.serve.gate import key_digests

    digests = key_digests(" alpha ,beta,")
    assert len(digests) == 2 and all(len(h) == 64 and "alpha" not in h for h in digests)
    monkeypatch.delenv("RW_ABSENT", raising=False)
    g = Gate(None, api_keys_env="RW_ABSENT", api_key_sha256=digests, models=MODELS)
    assert call(g, "/v1/models", key="beta", method="GET")[0] == 200
    assert call(g, "/v1/models", key="gamma", method="GET")[0] == 401
    assert call(g, "/v1/models", method="GET")[0] == 401


@pytest.mark.parametrize("raw, status, needle", [
    (b"{not json", 400, "malformed JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"model": "tiny", "max_tokens": 3}).encode(), 400, "'prompt' is required"),
    (body(model="nope"), 404, "does not exist"),
    (body(max_tokens=0), 400, "at least 1"),
    (body(max_tokens=-5), 400, "at least 1"),
    (body(max_tokens="5"), 400, "integer"),
    (body(max_tokens=10_000), 400, "context length of 256"),
    (body(temperature=1e9), 400, "temperature"),
    (body(temperature=-1), 400, "temperature"),
    (body(top_p=5), 400, "top_p"),
    (body(n=100000), 400, "'n'"),
    (body(stream="yes"), 400, "stream"),
])
def test_bad_completions(gate, raw, status, needle):
    st, err, seen = call(gate, "/v1/completions", raw, key="alpha")
    assert st == status and needle in err["error"]["message"] and not seen


def test_chat_validation():
    with pytest.raises(RequestError, match="'messages' is required"):
        validate("chat", {"model": "tiny"}, MODELS)
    with pytest.raises(RequestError, match="non-empty list"):
        validate("chat", {"model": "tiny", "messages": []}, MODELS)
    validate("chat", {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 5}, MODELS)
    with pytest.raises(RequestError, match="'model' is required"):
        validate("chat", {"messages": [{"role": "user", "content": "x"}]}, {"a": 8, "b": 8})


def test_open_gate_still_validates():
    g = Gate(None, models=MODELS)
    assert call(g, "/v1/completions", body())[0] == 200
    assert call(g, "/v1/completions", body(max_tokens=0))[0] == 400
