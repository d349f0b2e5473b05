"""Retrieval at query time: an index job's files, a Serve deployment that embeds and searches,
and the ASGI middleware that answers ``POST /v1/retrieve`` and the RAG option of completions/chat.

The index artifact's layout (``rayworks.config.index``) is the only contract with the index
job: this module reads ``index.faiss`` (IVF lists memory-mapped from ``index.ivfdata``
beside it), the ``meta/`` shards and the manifest, whose ``embedding`` block names the
model and engine settings the vectors were made with. Queries are embedded the same way
(vLLM ``runner="pooling", convert="embed"``), so a chunk's own text finds that chunk.

The middleware sits inside :class:`rayworks.serve.gate.Gate` (auth and 4xx rules first) and
reaches the :class:`Retriever` deployment of the same app through a Serve handle. A new
index rolls out like new weights: its manifest's sha256 is part of the deployment's
arguments, so Serve starts new replicas before it stops the old ones.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from typing import Any

from rayworks import storage
from rayworks.config.engine import cpu_engine_env
from rayworks.config.index import (INDEX_FILE, IVFDATA_FILE, M_EMBEDDING, M_INDEX_TYPE, M_METRIC, M_SEARCH,
                                   META_DIR, VECTORS_DIR)
from rayworks.serve.gate import RequestError, replay_body, rewriting_send

RETRIEVER_DEPLOYMENT = "Retriever"
RETRIEVE_PATH = "/v1/retrieve"
RAG_PATHS = {"/v1/completions": "completions", "/v1/chat/completions": "chat"}
MAX_BODY_BYTES = 1 << 20


# ---------------------------------------------------------------- the index files

class LoadedIndex:
    """An index artifact in memory: the FAISS index (IVF lists on disk) and the chunk metadata."""

    def __init__(self, uri: str):
        import faiss
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.manifest = storage.read_json(storage.join(uri, "manifest.json"))
        if self.manifest.get("kind") != "index":
            raise ValueError(f"{uri} is not an index artifact (its manifest says kind {self.manifest.get('kind')!r})")
        self.manifest_sha256 = storage.sha256_file(storage.join(uri, "manifest.json"))
        local = uri
        if storage.is_remote(uri):  # FAISS reads local files; the lists are then memory-mapped from there
            local = tempfile.mkdtemp(prefix="rayworks-index-")
            storage.local_copy(uri, local, [INDEX_FILE, IVFDATA_FILE])
        path = os.path.join(storage.filesystem(local)[1], INDEX_FILE)
        ivf = self.manifest[M_INDEX_TYPE].startswith("ivf")
        self.index = faiss.read_index(path, faiss.IO_FLAG_ONDISK_SAME_DIR if ivf else 0)
        search = self.manifest.get(M_SEARCH) or {}
        if "nprobe" in search:
            faiss.extract_index_ivf(self.index).nprobe = int(search["nprobe"])
        if "ef_search" in search:
            faiss.downcast_index(self.index.index).hnsw.efSearch = int(search["ef_search"])
        tables = []
        for f in storage.list_files(storage.join(uri, META_DIR), ".parquet"):
            with storage.open_input(f) as fh:
                tables.append(pq.read_table(fh))
        meta = pa.concat_tables(tables).sort_by("id")
        self.ids = meta.column("id").to_numpy()
        self.meta = {c: meta.column(c).to_pylist() for c in ("chunk_id", "doc_id", "text")}
        self.dim = int(self.index.d)
        self._np = np
        self.refine = int(search.get("refine_factor") or 0)
        self.ip = self.manifest.get(M_METRIC, "ip") == "ip"
        if self.refine:  # raw vectors on disk, memory-mapped: only the candidates' rows are read
            vdir = storage.join(local if storage.is_remote(uri) else uri, VECTORS_DIR)
            if storage.is_remote(uri):
                storage.local_copy(storage.join(uri, VECTORS_DIR), vdir)
            files = storage.list_files(vdir, ".npy")
            self.starts = np.array([int(storage.name_of(f)[len("from-"):-len(".npy")]) for f in files])
            self.raw = [np.load(storage.filesystem(f)[1], mmap_mode="r") for f in files]

    def _rescore(self, q, cand, k: int):
        """Exact scores of the PQ candidates (from the raw vectors); the best ``k`` per query."""
        np = self._np
        scores, ids = np.full((len(q), k), -np.inf if self.ip else np.inf, np.float32), np.full((len(q), k), -1)
        for r, (qv, row) in enumerate(zip(q, cand)):
            row = row[row >= 0]
            shard = np.searchsorted(self.starts, row, side="right") - 1
            vecs = np.stack([self.raw[s][i - self.starts[s]] for s, i in zip(shard, row)]) if len(row) else None
            if vecs is None:
                continue
            s = vecs @ qv if self.ip else ((vecs - qv) ** 2).sum(axis=1)
            order = np.argsort(-s if self.ip else s, kind="stable")[:k]
            scores[r, :len(order)], ids[r, :len(order)] = s[order], row[order]
        return scores, ids

    def search(self, vectors, k: int) -> list[list[dict]]:
        """Top-``k`` hits per query vector: rank, score, id, chunk_id, doc_id, text."""
        np = self._np
        q = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim))
        if self.refine:
            scores, ids = self._rescore(q, self.index.search(q, k * self.refine)[1], k)
        else:
            scores, ids = self.index.search(q, k)
        out = []
        for srow, irow in zip(scores, ids):
            hits = []
            for s, i in zip(srow, irow):
                if i < 0:  # fewer than k vectors reachable with these search settings
                    continue
                j = int(np.searchsorted(self.ids, i))
                hits.append({"rank": len(hits) + 1, "score": float(s), "id": int(i),
                             **{c: self.meta[c][j] for c in ("chunk_id", "doc_id", "text")}})
            out.append(hits)
        return out


# ---------------------------------------------------------------- the Serve deployment

class Retriever:
    """Embeds queries with the index's own embedding model (vLLM pooling) and searches the index."""

    def __init__(self, index: str, index_sha256: str | None = None):
        # index_sha256 is only there to make a rebuilt index a new deployment version (a rollout).
        from vllm import LLM

        self.loaded = LoadedIndex(index)
        emb = self.loaded.manifest.get(M_EMBEDDING) or {}
        if not emb.get("model"):
            raise ValueError(f"index {index}: its manifest names no embedding model; rebuild it from an embed job")
        kw = {k: v for k, v in (emb.get("engine_kwargs") or {}).items() if k not in ("runner", "convert", "task")}
        self.llm = LLM(model=emb["model"], runner="pooling", convert="embed", **kw)
        self.lock = asyncio.Lock()

    def _embed(self, texts: list[str]):
        return [o.outputs.embedding for o in self.llm.embed(texts, use_tqdm=False)]

    async def search(self, queries: list[str], k: int) -> dict:
        """``{"index": info, "hits": [top-k hits per query]}``: the answer names the index that made it, so
        a client (and the rollout test) sees which index served it while a new one rolls out."""
        async with self.lock:  # one engine, one batch at a time; the batch holds every query of a request
            vecs = await asyncio.to_thread(self._embed, queries)
        return {"index": self.info(), "hits": self.loaded.search(vecs, k)}

    def info(self) -> dict:
        m = self.loaded.manifest
        return {"name": m.get("name"), "type": m.get(M_INDEX_TYPE), "num_vectors": m.get("num_vectors"),
                "fingerprint": m.get("fingerprint"), "manifest_sha256": self.loaded.manifest_sha256}

    def check_health(self) -> None:
        pass


def retriever_app(settings: dict):
    """The bound Retriever deployment for ``args['retrieval']`` (render.app_args)."""
    from ray import serve

    sha = storage.sha256_file(storage.join(settings["index"], "manifest.json"))
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "VLLM_CPU_KVCACHE_SPACE": str(settings.get("cpu_kvcache_space_gb", 1)),
           # One small engine per replica, in the replica's process (config.engine.cpu_engine_env).
           **cpu_engine_env(settings["num_cpus"])}
    dep = serve.deployment(Retriever, name=RETRIEVER_DEPLOYMENT).options(
        num_replicas=settings.get("num_replicas", 1), max_ongoing_requests=settings.get("max_ongoing_requests", 16),
        # code_env: the job's code, and no working_dir of the job's (serve.job.replica_code_env).
        ray_actor_options={"num_cpus": settings["num_cpus"],
                           "runtime_env": {**settings.get("code_env", {}), "env_vars": env}},
        max_surge_percent=settings.get("max_surge_percent", 100),
        graceful_shutdown_timeout_s=settings.get("graceful_shutdown_timeout_s", 30))
    return dep.bind(settings["index"], sha)


def middleware_settings(settings: dict) -> dict:
    """The RetrievalMiddleware keyword arguments (besides the handle) from ``args['retrieval']``."""
    return {"top_k": settings["top_k"], "max_k": settings["max_k"], "max_context_chars": settings["max_context_chars"]}


def retriever_handle():
    """The Retriever of the app this replica belongs to (the ingress path finds it by name)."""
    from ray import serve

    return serve.get_deployment_handle(RETRIEVER_DEPLOYMENT, serve.get_replica_context().app_name)


# ---------------------------------------------------------------- requests

def parse_retrieve(data: Any, max_k: int, default_k: int) -> tuple[list[str], int]:
    """(queries, k) of a /v1/retrieve body; RequestError (400) naming the field otherwise."""
    if not isinstance(data, dict):
        raise RequestError(400, f"request body must be a JSON object, got {type(data).__name__}")
    q = data.get("query", data.get("input"))
    if isinstance(q, str):
        q = [q]
    if not isinstance(q, list) or not q or not all(isinstance(x, str) and x.strip() for x in q):
        raise RequestError(400, "'query' must be a non-empty string or a non-empty list of them", "query")
    if len(q) > 64:
        raise RequestError(400, f"'query' holds {len(q)} queries; at most 64 per request", "query")
    return q, _k(data.get("k", default_k), max_k)


def _k(k: Any, max_k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= max_k:
        raise RequestError(400, f"'k' must be an integer between 1 and {max_k}, got {k!r}", "k")
    return k


def rag_settings(data: dict, max_k: int, default_k: int) -> int | None:
    """The k of a request's ``rag`` option (true or {"k": n}); None when the request has none."""
    rag = data.get("rag")
    if rag is None or rag is False:
        return None
    if rag is True:
        return default_k
    if isinstance(rag, dict) and set(rag) <= {"k"}:
        return _k(rag.get("k", default_k), max_k)
    raise RequestError(400, "'rag' must be true or an object {\"k\": <int>}", "rag")


def rag_query(endpoint: str, data: dict) -> str:
    """The text retrieval searches with: the prompt, or the last user message."""
    if endpoint == "completions":
        p = data.get("prompt")
        if isinstance(p, str):
            return p
        raise RequestError(400, "'rag' needs 'prompt' to be one string", "prompt")
    for m in reversed(data.get("messages") or []):
        if m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"]
    raise RequestError(400, "'rag' needs a user message with text content", "messages")


def context_block(hits: list[dict], max_chars: int) -> str:
    """The retrieved chunks as prompt text, numbered like the sources returned, within ``max_chars``."""
    parts, used = [], 0
    for h in hits:
        piece = f"[{h['rank']}] ({h['doc_id']}) {h['text'].strip()}\n"
        if used + len(piece) > max_chars and parts:
            break
        parts.append(piece[: max_chars - used] if not parts else piece)
        used += len(parts[-1])
    return "Context:\n" + "".join(parts)


def augment(endpoint: str, data: dict, hits: list[dict], max_chars: int) -> dict:
    """The request with the retrieved context put into the prompt (and ``rag`` removed)."""
    body = {k: v for k, v in data.items() if k != "rag"}
    ctx = context_block(hits, max_chars)
    if endpoint == "completions":
        body["prompt"] = f"{ctx}\n{data['prompt']}"
    else:
        body["messages"] = [{"role": "system", "content": ctx}] + list(data["messages"])
    return body


def sources(hits: list[dict]) -> list[dict]:
    return [{k: h[k] for k in ("rank", "score", "chunk_id", "doc_id", "text")} for h in hits]


class RetrievalMiddleware:
    """Answers POST /v1/retrieve and rewrites RAG completions/chat; everything else passes through.

    Placed inside the gate: every request here already carries a valid key and passed the
    gate's checks. ``handle`` is the Retriever deployment's handle, or a callable returning it.
    """

    def __init__(self, app, *, handle, top_k: int = 4, max_k: int = 50, max_context_chars: int = 2000):
        self.app, self._handle = app, handle
        self.top_k, self.max_k, self.max_context_chars = top_k, max_k, max_context_chars

    def handle(self):
        if callable(self._handle) and not hasattr(self._handle, "search"):
            self._handle = self._handle()
        return self._handle

    async def _search(self, queries: list[str], k: int, what: str) -> dict:
        import time

        t0 = time.perf_counter()
        res = await self.handle().search.remote(queries, k)
        _observe(what, len(queries), time.perf_counter() - t0)
        return res

    @staticmethod
    async def _send_json(send, status: int, obj: Any, headers: list | None = None) -> None:
        body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        path = path.rstrip("/")
        if path == RETRIEVE_PATH:
            if scope.get("method") != "POST":
                return await self._send_json(send, 405, RequestError(405, "use POST /v1/retrieve").body(),
                                             [(b"allow", b"POST")])
            return await self._retrieve(receive, send)
        endpoint = RAG_PATHS.get(path)
        if endpoint is None or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        try:
            data = json.loads(body) if body is not None else None
        except (ValueError, UnicodeDecodeError):
            data = None  # not ours to judge: the gate already refused malformed JSON
        k = None
        try:
            if isinstance(data, dict):
                k = rag_settings(data, self.max_k, self.top_k)
        except RequestError as err:
            return await self._send_json(send, err.status, err.body())
        if k is None:
            return await self.app(scope, replay_body(body or b"", receive), send)
        try:
            hits = (await self._search([rag_query(endpoint, data)], k, "rag"))["hits"][0]
        except RequestError as err:
            return await self._send_json(send, err.status, err.body())
        new = json.dumps(augment(endpoint, data, hits, self.max_context_chars)).encode()
        headers = [(n, v) for n, v in scope.get("headers", []) if n.lower() != b"content-length"]
        headers.append((b"content-length", str(len(new)).encode()))
        return await self.app({**scope, "headers": headers}, replay_body(new, receive),
                              with_sources(send, sources(hits)))

    async def _retrieve(self, receive, send):
        body = await _read_body(receive)
        try:
            if body is None:
                raise RequestError(413, f"request body over {MAX_BODY_BYTES} bytes")
            try:
                data = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequestError(400, f"malformed JSON body: {exc}") from None
            queries, k = parse_retrieve(data, self.max_k, self.top_k)
        except RequestError as err:
            return await self._send_json(send, err.status, err.body())
        res = await self._search(queries, k, "retrieve")
        await self._send_json(send, 200, {"object": "list", "k": k, "index": res["index"],
                                          "data": [{"query": q, "hits": h} for q, h in zip(queries, res["hits"])]})


def _observe(what: str, num_queries: int, seconds: float) -> None:
    """Retrieval metrics for the serving dashboard (as ray_rayworks_serve_retrieval_*)."""
    try:
        from rayworks import metrics

        tags = metrics.tags("serve", "retrieval", kind=what)
        metrics.counter("rayworks_serve_retrieval_queries_total", "Queries embedded and searched (retrieve and rag).",
                        ("kind",)).inc(num_queries, tags=tags)
        metrics.histogram("rayworks_serve_retrieval_latency_s", "Embed + search time of one retrieval request.",
                          [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5], ("kind",)).observe(seconds, tags=tags)
    except Exception:  # noqa: BLE001 - metrics must never fail a request (e.g. outside Ray in tests)
        pass


async def _read_body(receive) -> bytes | None:
    """The whole request body, or None when it is over MAX_BODY_BYTES (of RAG requests the gate
    has already bounded the size)."""
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            return b"".join(chunks)
        chunks.append(msg.get("body", b""))
        size += len(chunks[-1])
        if size > 16 * MAX_BODY_BYTES:
            return None
        if not msg.get("more_body"):
            return b"".join(chunks)


def _add_sources(body: bytes, srcs: list[dict]) -> bytes | None:
    """``body`` (one JSON object) with ``sources`` added; None when it is not a JSON object."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    obj["sources"] = srcs
    return json.dumps(obj).encode()


def with_sources(send, srcs: list[dict]):
    """A send that adds ``sources`` to a successful response; errors pass unchanged.

    A JSON response gets a top-level ``sources`` field. A stream (``text/event-stream``, the
    answer to ``stream: true``) gets it on its first event: the first chunk then carries the
    sources beside its usual fields (OpenAI clients keep unknown fields: ``chunk.sources`` in
    the Python client), before any text. An extra event of its own would be a chunk without
    ``choices``, which clients that read ``chunk.choices[0]`` on every chunk trip over.
    """
    json_send = rewriting_send(send, lambda status, body: body if status != 200 else
                               (_add_sources(body, srcs) or body))
    mode: str | None = None  # "sse" | "json" | "pass", decided by the response's start
    buf = b""

    async def wrapped(msg):
        nonlocal mode, buf
        if msg["type"] == "http.response.start":
            ctype = dict(msg.get("headers") or []).get(b"content-type", b"")
            mode = "pass" if msg["status"] != 200 else "sse" if ctype.startswith(b"text/event-stream") else "json"
            if mode != "json":
                return await send(msg)
        if mode == "json":
            return await json_send(msg)
        if mode != "sse" or msg["type"] != "http.response.body":
            return await send(msg)
        buf += msg.get("body", b"")
        head, sep, rest = buf.partition(b"\n\n")
        if not sep and msg.get("more_body"):
            return None  # the first event is not complete yet
        mode = "pass"
        if sep and head.startswith(b"data: "):
            new = _add_sources(head[len(b"data: "):], srcs)
            if new is not None:
                head = b"data: " + new
        body, buf = head + sep + rest, b""
        return await send({**msg, "body": body})

    return wrapped


def check_index(uri: str) -> None:
    """ConfigError unless ``uri`` holds a complete index artifact (the serve job's preflight)."""
    from rayworks.errors import ConfigError

    m = storage.join(uri, "manifest.json")
    if not storage.is_file(m):
        raise ConfigError(f"retrieval.index: no index at {uri} (no manifest.json); run the index job first")
    kind = storage.read_json(m).get("kind")
    if kind != "index":
        raise ConfigError(f"retrieval.index: {uri} holds a {kind!r} artifact, not an index job's output")
    if not storage.is_file(storage.join(uri, INDEX_FILE)):
        raise ConfigError(f"retrieval.index: {uri} has no {INDEX_FILE}; rerun the index job")
