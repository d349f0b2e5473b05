"""Documents in, chunks out: read JSONL / Parquet / text and cut each document in model tokens.

A chunk is a span of its document's own text, cut at token boundaries found with the
model's tokenizer (its offsets), ``chunk_tokens`` long and starting ``chunk_tokens -
overlap_tokens`` after the previous one. The text is the original substring (not decoded
tokens), so a query with a chunk's text embeds exactly like the chunk did. Chunk ids are
``{doc_id}#{n}``; the global row ``index`` (document order, then chunk order) is the
FAISS id downstream, so the same input always gives the same ids.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from dataclasses import dataclass, field

from rayworks import storage
from rayworks.config.embed import EmbedJob
from rayworks.errors import ConfigError

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json"]


@dataclass
class Docs:
    """The documents read, the files they came from and their sha256, and rows refused."""

    docs: list[tuple[str, str]] = field(default_factory=list)  # (doc_id, text)
    files: list[str] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {doc_id, reason}


def input_files(path: str) -> list[str]:
    """The file itself, or the data files of a folder (sorted: the input's order)."""
    if storage.is_dir(path):
        files = [f for f in storage.list_files(path) if not storage.name_of(f).startswith((".", "_"))]
        if not files:
            raise ConfigError(f"input.path: folder {path} holds no files")
        return files
    if not storage.exists(path):
        raise ConfigError(f"input.path: {path} does not exist; give a .jsonl, .parquet or .txt file or a folder")
    return [path]


def _rows(data: bytes, fmt: str, name: str):
    if fmt == "parquet":
        import pyarrow.parquet as pq

        yield from pq.read_table(io.BytesIO(data)).to_pylist()
    elif fmt == "jsonl":
        for n, line in enumerate(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    obj = {"__error__": f"line {n + 1} of {name} is not valid JSON: {exc.msg}"}
                yield obj if isinstance(obj, dict) else {"__error__": f"line {n + 1} of {name} is not an object"}
    else:
        yield {"__text__": data.decode("utf-8")}


def read_docs(job: EmbedJob) -> Docs:
    """Every document as (doc_id, text), in input order; rows without text are skipped with a reason."""
    inp, out, seen = job.input, Docs(), set()
    for f in input_files(inp.path):
        data = storage.read_bytes(f)
        out.files.append(f)
        out.sha256.append(hashlib.sha256(data).hexdigest())
        name = storage.name_of(f)
        for n, row in enumerate(_rows(data, storage.file_format(f, inp.format), name)):
            if "__text__" in row:
                doc_id, text = name, row["__text__"]
            else:
                doc_id = str(row.get(inp.id_field)) if inp.id_field and row.get(inp.id_field) is not None \
                    else f"{name}:{n}"
                text = row.get(inp.text_field)
            if "__error__" in row or not isinstance(text, str) or not text.strip():
                why = row.get("__error__") or f"no text in field {inp.text_field!r}"
                out.skipped.append({"doc_id": doc_id, "reason": why})
                continue
            if doc_id in seen:
                raise ConfigError(f"input.id_field: document id {doc_id!r} occurs twice; ids must be unique "
                                  "(or leave id_field unset to number the rows)")
            seen.add(doc_id)
            out.docs.append((doc_id, text))
            if inp.num_docs_limit and len(out.docs) >= inp.num_docs_limit:
                return out
    return out


def load_tokenizer(model: str):
    """The model's fast tokenizer (offsets are needed), copied locally first from object storage."""
    from transformers import AutoTokenizer

    src = model
    if storage.is_remote(model):
        src = storage.local_copy(model, tempfile.mkdtemp(prefix="rayworks-tok-"), TOKENIZER_FILES)
    try:
        tok = AutoTokenizer.from_pretrained(src)
    except Exception as exc:  # noqa: BLE001 - many loader errors, one user-facing cause
        raise ConfigError(f"model: cannot load a tokenizer from {model} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}); the folder needs tokenizer files") from None
    if not tok.is_fast:
        raise ConfigError(f"model: the tokenizer of {model} is not a fast tokenizer; chunking needs its offsets "
                          "(save a tokenizer.json beside the model)")
    return tok


def spans(offsets: list[tuple[int, int]], size: int, overlap: int, min_tokens: int) -> list[tuple[int, int]]:
    """Character spans of the chunks of one document from its token offsets.

    Windows of ``size`` tokens advance by ``size - overlap``; a last window shorter than
    ``min_tokens`` is dropped unless it is the only one.
    """
    n, step, out = len(offsets), size - overlap, []
    for a in range(0, max(n, 1), step):
        b = min(a + size, n)
        if out and b - a < min_tokens:
            break
        if n:
            out.append((offsets[a][0], offsets[b - 1][1]))
        if b >= n:
            break
    return out


def chunk_docs(docs: list[tuple[str, str]], tokenizer, size: int, overlap: int, min_tokens: int) -> list[dict]:
    """Rows {index, chunk_id, doc_id, text} of every chunk of every document, in order."""
    rows: list[dict] = []
    for doc_id, text in docs:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        for k, (a, b) in enumerate(spans(enc["offset_mapping"], size, overlap, min_tokens)):
            piece = text[a:b]
            if piece.strip():
                rows.append({"index": len(rows), "chunk_id": f"{doc_id}#{k}", "doc_id": doc_id, "text": piece})
    return rows
