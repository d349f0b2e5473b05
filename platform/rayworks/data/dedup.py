"""Exact deduplication across all inputs, distributed by hash bucket.

Each bucket task reads only the (key, hash) columns of every unit, keeps the rows
whose hash falls in its bucket, and lists every copy but the first: the first copy is
the one with the smallest key, i.e. the earliest in input order, whatever the
parallelism. The dropped keys are written sorted, so a unit later reads just its own
key range from each bucket.
"""

from __future__ import annotations

import numpy as np

from rayworks import storage


def _bucket_of(hashes, num_buckets: int) -> np.ndarray:
    """Bucket of each 16-byte hash (from its first 8 bytes)."""
    buf = np.frombuffer(hashes.buffers()[1], dtype=np.uint8)[hashes.offset * 16:(hashes.offset + len(hashes)) * 16]
    first = buf.reshape(-1, 16)[:, :8].copy().view("<u8").ravel()
    return (first % np.uint64(num_buckets)).astype(np.int64)


def duplicate_keys(keys: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Keys of all but the first (smallest-key) copy of each hash; hashes is (n, 16) uint8."""
    if len(keys) == 0:
        return keys[:0]
    hi = hashes[:, :8].copy().view(">u8").ravel()
    lo = hashes[:, 8:].copy().view(">u8").ravel()
    order = np.lexsort((keys, lo, hi))
    hi, lo, k = hi[order], lo[order], keys[order]
    same = np.zeros(len(k), dtype=bool)
    same[1:] = (hi[1:] == hi[:-1]) & (lo[1:] == lo[:-1])
    return np.sort(k[same])


def dedup_bucket(bucket: int, num_buckets: int, unit_paths: list[str], out_path: str) -> dict:
    """Finds the duplicates whose hash is in ``bucket``; writes their keys; returns counts."""
    import pyarrow as pa

    keys, hashes = [], []
    for p in unit_paths:
        t = storage.read_parquet(p, columns=["key", "hash"])
        if t.num_rows == 0:
            continue
        h = t.column("hash").combine_chunks()
        mask = _bucket_of(h, num_buckets) == bucket
        keys.append(t.column("key").to_numpy()[mask])
        hb = np.frombuffer(h.buffers()[1], dtype=np.uint8)[h.offset * 16:(h.offset + len(h)) * 16].reshape(-1, 16)
        hashes.append(hb[mask])
    if keys:
        dup = duplicate_keys(np.concatenate(keys), np.concatenate(hashes))
    else:
        dup = np.zeros(0, dtype=np.int64)
    table = pa.table({"key": pa.array(dup, pa.int64())})
    storage.write_bytes(out_path, storage.table_to_parquet_bytes(table, row_group_rows=65536))
    return {"bucket": bucket, "duplicates": int(len(dup))}


def dropped_keys_for_unit(unit: int, bucket_paths: list[str]) -> set[int]:
    """The keys of ``unit``'s documents that are duplicates of earlier ones."""
    import pyarrow.compute as pc

    lo, hi = unit << 32, (unit + 1) << 32
    out: set[int] = set()
    for p in bucket_paths:
        col = storage.read_parquet(p).column("key")
        sel = pc.and_(pc.greater_equal(col, lo), pc.less(col, hi))
        out.update(col.filter(sel).to_pylist())
    return out
