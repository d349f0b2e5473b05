"""Tokenize and pack one unit into fixed-length rows, split into train and val.

Within a unit the documents keep input order; each is followed by the end-of-text
token and the stream is cut into rows of ``seq_len``. What is left over at the end
of a unit (fewer than ``seq_len`` tokens) is returned as its *tail*; the job packs
all tails, in unit order, into one last shard. So every token but the final
remainder lands in a row, and the result depends only on the data and the unit
layout, not on which worker ran which unit or when.

Beside its shards a unit writes a document index per split,
``documents/{split}-NNNNN.parquet``: one row per document in packing order with its
key, its token count (end-of-text included, so the running sum is each document's
offset in the unit's token stream) and, when language ID ran, ``lang``/``lang_score``.
It answers "which documents did this model see, in which split" and lets a user
filter or weight by language score later without re-running prep.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

from rayworks import storage
from rayworks.data.clean import score
from rayworks.data.dedup import dropped_keys_for_unit

ENCODE_BATCH = 1024  # documents per encode_batch call, at most
ENCODE_CHARS = 1 << 20  # and about this much text: its Encodings (~100 B a token) are what a worker peaks on
SPLITS = ("train", "val")
DOC_INDEX_DIR = "documents"


def rows_table(flat: np.ndarray, seq_len: int):
    """A one-column table ``input_ids: fixed_size_list<int32>[seq_len]`` from a flat token array."""
    import pyarrow as pa

    values = pa.array(np.ascontiguousarray(flat, dtype=np.int32), pa.int32())
    return pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(values, seq_len)})


def write_shard(uri: str, flat: np.ndarray, seq_len: int) -> dict:
    """Writes rows to a Parquet shard (atomically); returns rows and the file's sha256."""
    data = storage.table_to_parquet_bytes(rows_table(flat, seq_len), row_group_rows=1024, compression="zstd")
    storage.write_bytes(uri, data)
    return {"rows": len(flat) // seq_len, "sha256": hashlib.sha256(data).hexdigest()}


def encode_stream(tok, texts: list[str], eos_id: int, lengths: list[int] | None = None) -> np.ndarray:
    """Token ids of ``texts``, each followed by ``eos_id``, as one int32 array.

    ``lengths``, when given, receives each document's token count (its end-of-text included).
    """
    parts = []
    eos = np.array([eos_id], dtype=np.int32)
    for batch in _batches(texts):
        for enc in tok.encode_batch_fast(batch, add_special_tokens=False):
            parts.append(np.asarray(enc.ids, dtype=np.int32))
            parts.append(eos)
            if lengths is not None:
                lengths.append(len(enc.ids) + 1)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)


def _batches(texts: list[str]):
    """``texts`` in order, cut into runs of at most ENCODE_BATCH documents and about ENCODE_CHARS
    characters (a longer document goes alone)."""
    start, chars = 0, 0
    for i, t in enumerate(texts):
        if i > start and (i - start >= ENCODE_BATCH or chars + len(t) > ENCODE_CHARS):
            yield texts[start:i]
            start, chars = i, 0
        chars += len(t)
    if start < len(texts):
        yield texts[start:]


DOC_INDEX_COLUMNS = ("lang", "lang_score")  # carried from the cleaned documents when present


def write_document_index(uri: str, keys: list[int], lengths: list[int], extra: dict[str, list]) -> dict:
    """Writes a split's document index for one unit (atomically); returns its name-free entry."""
    import pyarrow as pa

    cols = {"key": pa.array(keys, pa.int64()), "tokens": pa.array(lengths, pa.int32())}
    if "lang" in extra:
        cols["lang"] = pa.array(extra["lang"], pa.string())
        cols["lang_score"] = pa.array(extra["lang_score"], pa.float32())
    data = storage.table_to_parquet_bytes(pa.table(cols), row_group_rows=65536, compression="zstd")
    storage.write_bytes(uri, data)
    return {"documents": len(keys), "sha256": hashlib.sha256(data).hexdigest()}


def pack_unit(unit: int, docs_path: str, bucket_paths: list[str], tokenizer_json: bytes, eos_id: int,
              vocab_size: int, seq_len: int, val_fraction: float, seed: int, out_uri: str,
              counts_path: str, near_dup_paths: list[str] = ()) -> dict:
    """Tokenizes, splits and packs one unit; writes its shards and train token counts."""
    from rayworks.data.tokenizer import backend

    t = storage.read_parquet(docs_path)
    keys = t.column("key").to_pylist()
    hashes = t.column("hash").to_pylist()
    texts = t.column("text").to_pylist()
    extra_cols = [c for c in DOC_INDEX_COLUMNS if c in t.column_names]
    extra_vals = [t.column(c).to_pylist() for c in extra_cols]
    dropped = dropped_keys_for_unit(unit, bucket_paths) if bucket_paths else set()
    near = dropped_keys_for_unit(unit, near_dup_paths) if near_dup_paths else set()  # disjoint from dropped
    by_split: dict[str, list[str]] = {s: [] for s in SPLITS}
    keys_of: dict[str, list[int]] = {s: [] for s in SPLITS}
    extra_of: dict[str, dict[str, list]] = {s: {c: [] for c in extra_cols} for s in SPLITS}
    for i, (k, h, text) in enumerate(zip(keys, hashes, texts)):
        if k in dropped or k in near:
            continue
        split = "val" if score(h, b"split", seed) < val_fraction else "train"
        by_split[split].append(text)
        keys_of[split].append(k)
        for c, vals in zip(extra_cols, extra_vals):
            extra_of[split][c].append(vals[i])
    tok = backend(tokenizer_json)
    result = {"unit": unit, "duplicates_dropped": len(dropped), "splits": {}}
    if near_dup_paths:
        result["near_duplicates_dropped"] = len(near)
    counts = np.zeros(vocab_size, dtype=np.int64)
    for split in SPLITS:
        lengths: list[int] = []
        flat = encode_stream(tok, by_split[split], eos_id, lengths)
        n_rows = len(flat) // seq_len
        entry = {"documents": len(by_split[split]), "tokens": int(len(flat)),
                 "tail": flat[n_rows * seq_len:].tolist(), "rows": n_rows, "sha256": None}
        if by_split[split]:
            entry["document_index"] = write_document_index(
                storage.join(out_uri, DOC_INDEX_DIR, f"{split}-{unit:05d}.parquet"),
                keys_of[split], lengths, extra_of[split])
        if n_rows:
            body = flat[: n_rows * seq_len]
            entry.update(write_shard(storage.join(out_uri, split, f"part-{unit:05d}.parquet"), body, seq_len))
            if split == "train":
                counts += np.bincount(body, minlength=vocab_size)[:vocab_size]
        result["splits"][split] = entry
    storage.write_bytes(counts_path, counts.tobytes())
    return result


def entropy_nats(counts: np.ndarray) -> float:
    """Entropy (nats) of the unigram distribution given by integer counts (order-independent)."""
    total = int(counts.sum())
    if total == 0:
        return 0.0
    nz = counts[counts > 0].astype(np.float64)
    p = nz / total
    return float(-math.fsum((p * np.log(p)).tolist()))
