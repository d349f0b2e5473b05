"""The embed job's configs, document reading and chunking, and the retrieval request rules (no Ray).

Chunking runs with a real byte-level BPE tokenizer (tests/tinymodel.py, the one the test
models carry): chunks are exact substrings of their documents, ``chunk_tokens`` long at
most, overlapping by ``overlap_tokens``, with stable ids.
"""

from __future__ import annotations

import json

import pytest

from rayworks.config.embed import EmbedJob
from rayworks.config.jobs import load_job_data
from rayworks.errors import ConfigError
from rayworks.retrieval import chunking
from rayworks.serve import retrieval as sr
from rayworks.serve.gate import RequestError


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from tinymodel import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def job(tmp_path, **over) -> EmbedJob:
    data = {"kind": "embed", "name": "e", "model": str(tmp_path), "input": {"path": str(tmp_path / "docs.jsonl")}}
    for k, v in over.items():
        data[k] = v
    return load_job_data(data, "test", tmp_path)


def test_spans_window_overlap_and_short_tail():
    offs = [(i * 2, i * 2 + 2) for i in range(10)]  # ten 2-char tokens
    assert chunking.spans(offs, 4, 1, 1) == [(0, 8), (6, 14), (12, 20)]
    assert chunking.spans(offs, 4, 0, 3) == [(0, 8), (8, 16)]  # a 2-token tail under min 3 is dropped
    assert chunking.spans(offs[:2], 4, 1, 3) == [(0, 4)]  # a short document is still one chunk
    assert chunking.spans([], 4, 1, 1) == []


def test_chunks_are_substrings_of_their_document(tok):
    import pydoc_data.topics as t

    docs = [(k, t.topics[k]) for k in sorted(t.topics)[:6]]
    rows = chunking.chunk_docs(docs, tok, 32, 8, 4)
    text = dict(docs)
    assert [r["index"] for r in rows] == list(range(len(rows)))
    assert len({r["chunk_id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["text"] in text[r["doc_id"]]
        assert len(tok(r["text"], add_special_tokens=False)["input_ids"]) <= 32 + 2  # re-merge at the cuts
    first = [r for r in rows if r["doc_id"] == docs[0][0]]
    assert len(first) > 2 and first[0]["chunk_id"] == f"{docs[0][0]}#0"
    # Consecutive chunks overlap: the next one starts inside the previous one.
    assert text[docs[0][0]].index(first[1]["text"]) < text[docs[0][0]].index(first[0]["text"]) + len(first[0]["text"])
    assert rows == chunking.chunk_docs(docs, tok, 32, 8, 4)  # same input, same chunks and ids


def test_read_docs_formats_ids_and_skips(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "docs.jsonl").write_text(json.dumps({"text": "alpha", "key": "a"}) + "\n{bad json\n"
                                         + json.dumps({"body": "no text"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    d = chunking.read_docs(job(tmp_path))
    assert d.docs == [("docs.jsonl:0", "alpha"), ("docs.jsonl:3", "b")] and len(d.skipped) == 2
    assert len(d.sha256[0]) == 64
    d = chunking.read_docs(job(tmp_path, input={"path": str(tmp_path / "docs.jsonl"), "id_field": "key"}))
    assert d.docs[0] == ("a", "alpha")
    pq.write_table(pa.table({"text": ["x", "y"], "id": ["1", "1"]}), tmp_path / "dup.parquet")
    with pytest.raises(ConfigError, match="occurs twice"):
        chunking.read_docs(job(tmp_path, input={"path": str(tmp_path / "dup.parquet"), "id_field": "id"}))
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "one.txt").write_text("whole file")
    assert chunking.read_docs(job(tmp_path, input={"path": str(tmp_path / "t")})).docs == [("one.txt", "whole file")]


def test_config_refuses_chunks_that_cannot_fit(tmp_path):
    with pytest.raises(ConfigError, match="overlap_tokens"):
        job(tmp_path, chunking={"chunk_tokens": 16, "overlap_tokens": 16})
    with pytest.raises(ConfigError, match="max_model_len"):
        job(tmp_path, chunking={"chunk_tokens": 256}, engine={"max_model_len": 256})
    with pytest.raises(ConfigError, match="chunk_size"):
        job(tmp_path, chunking={"chunk_size": 10})
    with pytest.raises(ConfigError, match="backend: ray_data_llm"):
        job(tmp_path, engine={"device": "gpu", "tensor_parallel_size": 2})
    with pytest.raises(ConfigError, match="backend"):
        job(tmp_path, engine={"backend": "transformers"})
    j = job(tmp_path)
    assert j.engine.max_model_len == 512 and j.engine.dtype == "float32" and j.engine.backend == "llm"
    assert job(tmp_path, engine={"device": "gpu", "tensor_parallel_size": 2, "backend": "ray_data_llm"})


def test_retrieve_request_rules():
    assert sr.parse_retrieve({"query": "x"}, 50, 4) == (["x"], 4)
    assert sr.parse_retrieve({"query": ["a", "b"], "k": 7}, 50, 4) == (["a", "b"], 7)
    for body, field in [({"k": 3}, "query"), ({"query": ""}, "query"), ({"query": "x", "k": 0}, "k"),
                        ({"query": "x", "k": 51}, "k"), ({"query": "x", "k": True}, "k"), ([1], None)]:
        with pytest.raises(RequestError) as e:
            sr.parse_retrieve(body, 50, 4)
        assert e.value.status == 400 and e.value.param == field


def test_rag_prompt_and_sources():
    hits = [{"rank": 1, "score": 0.9, "id": 3, "chunk_id": "d#0", "doc_id": "d", "text": "first chunk"},
            {"rank": 2, "score": 0.8, "id": 4, "chunk_id": "e#1", "doc_id": "e", "text": "second chunk"}]
    assert sr.rag_settings({"rag": True}, 50, 4) == 4 and sr.rag_settings({"rag": {"k": 2}}, 50, 4) == 2
    assert sr.rag_settings({}, 50, 4) is None
    with pytest.raises(RequestError):
        sr.rag_settings({"rag": {"top": 2}}, 50, 4)
    chat = {"model": "m", "messages": [{"role": "user", "content": "q?"}], "rag": True}
    assert sr.rag_query("chat", chat) == "q?"
    out = sr.augment("chat", chat, hits, 2000)
    assert "rag" not in out and out["messages"][-1] == chat["messages"][0]
    assert "[1] (d) first chunk" in out["messages"][0]["content"] and "[2] (e)" in out["messages"][0]["content"]
    comp = sr.augment("completions", {"prompt": "def f", "rag": {"k": 1}}, hits, 30)
    assert comp["prompt"].endswith("\ndef f") and "second" not in comp["prompt"]  # the char budget holds
    assert [s["chunk_id"] for s in sr.sources(hits)] == ["d#0", "e#1"] and "id" not in sr.sources(hits)[0]


def test_parts_commit_whole_in_index_order_from_out_of_order_batches():
    """The driver's part assembly: batches from several engines arrive in any order; a part is
    handed out once all its vectors are back, sorted, with its chunk columns and a fixed-size
    float32 vector column; a committed part is skipped; a stray row is refused."""
    import numpy as np
    import pyarrow as pa

    from rayworks.retrieval import embed as em

    rows = [{"index": i, "chunk_id": f"d{i // 3}#{i % 3}", "doc_id": f"d{i // 3}", "text": f"t{i}"} for i in range(10)]
    pending = em.pending_parts(rows, done={1}, rows_per_part=4)  # part 1 (rows 4-7) is committed already
    assert sorted(pending) == [0, 2] and pending[2].column("index").to_pylist() == [8, 9]
    vec = lambda idx: np.stack([np.full(3, i, np.float32) for i in idx])  # noqa: E731 - row i's vector is all i
    c = em.PartCollector(pending, 4)
    assert c.add([9, 2], vec([9, 2])) == []
    got = c.add([0, 8, 3], vec([0, 8, 3]))
    assert [k for k, _ in got] == [2]
    (k, t), = got
    assert t.schema == em.part_schema(3) and t.column("index").to_pylist() == [8, 9]
    assert t.column("vector").type == pa.list_(pa.float32(), 3) and t.column("vector")[1].as_py() == [9.0] * 3
    assert c.incomplete() == [0]
    (k, t), = c.add(np.array([1]), np.array([np.ones(3, np.float32)], dtype=object))  # a column of arrays
    assert k == 0 and t.column("chunk_id").to_pylist() == ["d0#0", "d0#1", "d0#2", "d1#0"]
    assert [v[0] for v in t.column("vector").to_pylist()] == [0.0, 1.0, 2.0, 3.0] and c.incomplete() == []
    with pytest.raises(RuntimeError, match="part 1, which was not asked for"):
        em.PartCollector(pending, 4).add([5], vec([5]))
    with pytest.raises(RuntimeError, match="vectors of 2 and 3 floats"):
        c2 = em.PartCollector(pending, 4)
        c2.add([0], vec([0]))
        c2.add([1], np.zeros((1, 2), np.float32))
