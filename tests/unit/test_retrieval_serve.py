"""The retrieval middleware's response rewriting (JSON and SSE streams) and `serve update --index` (no Ray).

The ASGI messages are the ones Starlette sends for vLLM's JSON answers and its
``text/event-stream`` answers to ``stream: true``; the sources must land on the first stream
event only, whole, however the body is split into messages.
"""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml

from rayworks.config.jobs import load_job
from rayworks.errors import ConfigError
from rayworks.serve.retrieval import with_sources

SRC = [{"rank": 1, "score": 0.9, "chunk_id": "d#0", "doc_id": "d", "text": "t"}]
SSE = [b"data: " + json.dumps({"id": "c1", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}).encode()
       + b"\n\n", b"data: " + json.dumps({"id": "c1", "choices": [{"index": 0, "delta": {"content": "hi"}}]}).encode()
       + b"\n\n", b"data: [DONE]\n\n"]


def run(messages: list[dict], srcs=SRC) -> list[dict]:
    sent: list[dict] = []

    async def send(msg):
        sent.append(msg)

    async def go():
        w = with_sources(send, srcs)
        for m in messages:
            await w(m)

    asyncio.run(go())
    return sent


def start(status: int, ctype: bytes, **extra) -> dict:
    return {"type": "http.response.start", "status": status, "headers": [(b"content-type", ctype)], **extra}


def body(data: bytes, more: bool) -> dict:
    return {"type": "http.response.body", "body": data, "more_body": more}


def events(sent: list[dict]) -> list[str]:
    text = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
    return [e[len("data: "):] for e in text.split("\n\n") if e]


@pytest.mark.parametrize("split", [1, 7, 10_000])
def test_stream_gets_sources_on_its_first_event_only(split):
    raw = b"".join(SSE)
    pieces = [raw[i:i + split] for i in range(0, len(raw), split)]
    sent = run([start(200, b"text/event-stream; charset=utf-8")]
               + [body(p, i < len(pieces) - 1) for i, p in enumerate(pieces)])
    assert sent[0]["type"] == "http.response.start" and sent[0]["headers"] == [(b"content-type",
                                                                                 b"text/event-stream; charset=utf-8")]
    ev = events(sent)
    first, second = json.loads(ev[0]), json.loads(ev[1])
    assert first["sources"] == SRC and first["choices"][0]["delta"] == {"role": "assistant"}
    assert "sources" not in second and second["choices"][0]["delta"]["content"] == "hi" and ev[2] == "[DONE]"
    assert not sent[-1].get("more_body")  # the stream still ends


def test_json_answer_gets_sources_and_a_new_length():
    answer = json.dumps({"id": "x", "choices": [{"text": "a"}]}).encode()
    sent = run([start(200, b"application/json"), body(answer[:5], True), body(answer[5:], False)])
    out = json.loads(sent[1]["body"])
    assert out["sources"] == SRC and out["choices"] == [{"text": "a"}]
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(sent[1]["body"])).encode()


@pytest.mark.parametrize("ctype", [b"application/json", b"text/event-stream"])
def test_errors_pass_unchanged(ctype):
    err = b'{"error": {"message": "bad"}}'
    msgs = [start(400, ctype), body(err, False)]
    assert run(msgs) == msgs


def write_job(tmp_path, retrieval: bool = True):
    export = tmp_path / "export"
    export.mkdir(exist_ok=True)
    (export / "config.json").write_text("{}")
    data = {"kind": "serve", "name": "s", "auth": {"allow_unauthenticated": True},
            "models": [{"id": "tiny", "source": "export", "engine": {"max_model_len": 256, "dtype": "float32"}}]}
    if retrieval:
        data["retrieval"] = {"index": "idx-v1", "top_k": 2}
    p = tmp_path / "serve.yaml"
    p.write_text(yaml.safe_dump(data))
    return load_job(p)


def test_update_replaces_the_index_and_keeps_the_rest(tmp_path):
    from rayworks.client.rollout import updated_job

    job = write_job(tmp_path)
    manifest = {"config": job.model_dump(mode="json")}
    new = updated_job(manifest, None, None, str(tmp_path / "idx-v2"))
    assert new.retrieval.index == str(tmp_path / "idx-v2") and new.retrieval.top_k == 2
    assert new.models[0].source == job.models[0].source
    both = updated_job(manifest, "tiny", str(tmp_path / "v2"), "s3://b/idx")
    assert (both.models[0].source, both.retrieval.index) == (str(tmp_path / "v2"), "s3://b/idx")
    (tmp_path / "bare").mkdir()
    bare = {"config": write_job(tmp_path / "bare", retrieval=False).model_dump(mode="json")}
    with pytest.raises(ConfigError, match="no index attached"):
        updated_job(bare, None, None, "idx")


@pytest.mark.parametrize("kw, needle", [({"model_id": None, "source": None}, "say what to update"),
                                        ({"model_id": "tiny", "source": None}, "say what to update"),
                                        ({"model_id": None, "source": None, "index": "i", "gate": "g.yaml"},
                                         "--gate evaluates new weights")])
def test_update_refuses_incomplete_requests_before_reading_anything(kw, needle):
    from rayworks.client.rollout import update

    with pytest.raises(ConfigError, match=needle):
        update(cluster="/nonexistent/spec.yaml", **kw)
