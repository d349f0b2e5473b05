"""Near-duplicate removal: MinHash signatures -> LSH buckets -> (verified) pairs -> clusters.

The stage runs after exact dedup as three kinds of work unit, each writing its output and
then a completion marker (so a kill resumes, redoing only unfinished units):

1. ``signature_unit`` (one per input unit): shingles and MinHash signatures of the unit's
   surviving documents, reduced to one 64-bit hash per band, written as one Parquet row
   group per *partition* (``band hash mod num_partitions``).
2. ``bucket_partition`` (one per partition): reads only its row group from every unit,
   groups by (band, band hash) and emits candidate pairs of keys. This is the hash-
   partitioned shuffle of LSH: a task holds only its partition's band hashes.
3. ``verify_unit`` (one per input unit, if ``verify``): computes the true Jaccard of each
   candidate pair whose larger key lies in the unit, and keeps the pairs at or above the
   threshold. It holds the unit's texts plus the texts of one partner unit at a time.

The driver then joins the pairs into connected components (:func:`components`); every
component keeps its smallest key (the first in input order) and drops the rest. All of it
is a function of the data and the parameters only: the pairs are sorted and unique and the
components do not depend on the order the units finished, so any parallelism gives the
same removed keys.
"""

from __future__ import annotations

import numpy as np

from rayworks import storage
from rayworks.data import minhash as mh
from rayworks.data.dedup import dropped_keys_for_unit

BATCH_DOCS = 2048
# In a bucket of g documents all g*(g-1)/2 pairs go to verification when g is at most this; a
# larger bucket (a template shared by many documents) yields a star (to its smallest key) plus a
# chain (each key to the next), 2g pairs, so one bucket cannot produce a quadratic pair list.
ALL_PAIRS_MAX = 32


def _unit_range(unit: int) -> tuple[int, int]:
    return unit << 32, (unit + 1) << 32


def signature_unit(unit: int, docs_path: str, dedup_paths: list[str], cfg: dict, num_partitions: int,
                   out_path: str) -> dict:
    """Writes the band hashes of one unit's documents (exact duplicates left out)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = storage.read_parquet(docs_path, columns=["key", "text"])
    skip = dropped_keys_for_unit(unit, dedup_paths) if dedup_paths else set()
    keys = t.column("key").to_numpy()
    a, b = mh.permutations(cfg["num_perm"], cfg["seed"])
    out_keys, out_bh, no_shingles = [], [], 0
    for s in range(0, t.num_rows, BATCH_DOCS):
        texts = t.column("text").slice(s, BATCH_DOCS).to_pylist()
        sets, kept = [], []
        for i, text in enumerate(texts, start=s):
            if int(keys[i]) in skip:
                continue
            sh = mh.shingles(text, cfg["shingle"], cfg["shingle_size"], cfg["seed"])
            if len(sh):
                sets.append(sh)
                kept.append(keys[i])
            else:
                no_shingles += 1
        if sets:
            out_bh.append(mh.band_hashes(mh.signatures(sets, a, b), cfg["bands"], cfg["rows"]))
            out_keys.append(np.asarray(kept, dtype=np.int64))
    bh = np.concatenate(out_bh) if out_bh else np.zeros((0, cfg["bands"]), dtype=np.uint64)
    k = np.concatenate(out_keys) if out_keys else np.zeros(0, dtype=np.int64)
    n = len(k)
    flat_bh = bh.reshape(-1)
    flat_key = np.repeat(k, cfg["bands"])
    flat_band = np.tile(np.arange(cfg["bands"], dtype=np.int16), n)
    part = (flat_bh % np.uint64(num_partitions)).astype(np.int64)
    order = np.lexsort((flat_key, flat_band, part))  # by partition; fixed order within it
    schema = pa.schema([("band", pa.int16()), ("bh", pa.uint64()), ("key", pa.int64())])
    counts = np.bincount(part, minlength=num_partitions)
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema, compression="lz4", write_statistics=False) as w:
        pos = 0
        for p in range(num_partitions):  # one row group per partition, empty ones included
            idx = order[pos:pos + counts[p]]
            pos += counts[p]
            w.write_table(pa.table({"band": flat_band[idx], "bh": flat_bh[idx], "key": flat_key[idx]},
                                   schema=schema))
    storage.write_bytes(out_path, sink.getvalue().to_pybytes())
    return {"unit": unit, "documents": int(n), "no_shingles": no_shingles}


def bucket_pairs(band: np.ndarray, bh: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Candidate pairs (a < b), shape (n, 2), sorted and unique, from rows sharing (band, bh)."""
    if len(keys) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.lexsort((keys, bh, band))
    band, bh, keys = band[order], bh[order], keys[order]
    new = np.ones(len(keys), dtype=bool)
    new[1:] = (band[1:] != band[:-1]) | (bh[1:] != bh[:-1])
    starts = np.flatnonzero(new)
    sizes = np.diff(np.append(starts, len(keys)))
    pairs = []
    big = starts[sizes > ALL_PAIRS_MAX]
    for s, g in zip(starts[(sizes > 1) & (sizes <= ALL_PAIRS_MAX)], sizes[(sizes > 1) & (sizes <= ALL_PAIRS_MAX)]):
        i, j = np.triu_indices(g, 1)
        pairs.append(np.stack([keys[s + i], keys[s + j]], axis=1))
    for s, g in zip(big, sizes[sizes > ALL_PAIRS_MAX]):
        grp = keys[s:s + g]
        pairs.append(np.stack([np.full(g - 1, grp[0]), grp[1:]], axis=1))
        pairs.append(np.stack([grp[1:-1], grp[2:]], axis=1))
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(pairs), axis=0)


def _pairs_table(pairs: np.ndarray):
    import pyarrow as pa

    return pa.table({"a": pa.array(pairs[:, 0], pa.int64()), "b": pa.array(pairs[:, 1], pa.int64())})


def bucket_partition(partition: int, sig_paths: list[str], out_path: str) -> dict:
    """Reads one partition from every unit's band hashes; writes its candidate pairs."""
    import pyarrow.parquet as pq

    bands, bhs, keys = [], [], []
    for p in sig_paths:
        fs, path = storage.filesystem(p)
        with fs.open_input_file(path) as f:
            t = pq.ParquetFile(f).read_row_group(partition)
        if t.num_rows:
            bands.append(t.column("band").to_numpy())
            bhs.append(t.column("bh").to_numpy())
            keys.append(t.column("key").to_numpy())
    rows = sum(len(k) for k in keys)
    if rows:
        pairs = bucket_pairs(np.concatenate(bands), np.concatenate(bhs), np.concatenate(keys))
    else:
        pairs = np.zeros((0, 2), dtype=np.int64)
    storage.write_bytes(out_path, storage.table_to_parquet_bytes(_pairs_table(pairs), row_group_rows=65536))
    return {"partition": partition, "rows": int(rows), "candidate_pairs": int(len(pairs))}


def _pairs_with_b_in(unit: int, pair_paths: list[str]) -> np.ndarray:
    """Unique candidate pairs whose larger key is in ``unit``, sorted."""
    import pyarrow.compute as pc

    lo, hi = _unit_range(unit)
    got = []
    for p in pair_paths:
        t = storage.read_parquet(p)
        sel = pc.and_(pc.greater_equal(t.column("b"), lo), pc.less(t.column("b"), hi))
        t = t.filter(sel)
        if t.num_rows:
            got.append(np.stack([t.column("a").to_numpy(), t.column("b").to_numpy()], axis=1))
    if not got:
        return np.zeros((0, 2), dtype=np.int64)
    return np.unique(np.concatenate(got), axis=0)


def _texts(docs_path: str, keys: np.ndarray) -> list[str]:
    """Texts of the given keys of a unit. Looked up by key, not by position: the curation stages
    drop documents after their keys are given, so a key's low bits are not its row."""
    import pyarrow as pa

    t = storage.read_parquet(docs_path, columns=["key", "text"])
    all_keys = t.column("key").to_numpy()
    order = np.argsort(all_keys, kind="stable")
    pos = np.searchsorted(all_keys[order], keys)
    pos = np.minimum(pos, len(order) - 1)
    rows = order[pos]
    if len(keys) and not np.array_equal(all_keys[rows], keys):
        missing = keys[all_keys[rows] != keys][:3]
        raise RuntimeError(f"near-dup verify: keys {missing.tolist()} are not in {docs_path}; "
                           "the clean stage's output changed under the job (rerun it from scratch)")
    return t.column("text").take(pa.array(rows, pa.int64())).to_pylist()


def verify_unit(unit: int, pair_paths: list[str], docs_paths: list[str], cfg: dict, out_path: str) -> dict:
    """Keeps the candidate pairs (with b in ``unit``) whose true Jaccard reaches the threshold."""
    pairs = _pairs_with_b_in(unit, pair_paths)
    keep = np.zeros(len(pairs), dtype=bool)
    if len(pairs):
        def shingle_map(u: int, ks: np.ndarray) -> dict[int, np.ndarray]:
            return {int(k): mh.shingles(t, cfg["shingle"], cfg["shingle_size"], cfg["seed"])
                    for k, t in zip(ks, _texts(docs_paths[u], ks.astype(np.int64)))}

        a_units = pairs[:, 0] >> 32
        own = shingle_map(unit, np.unique(np.concatenate([pairs[:, 1], pairs[a_units == unit, 0]])))
        for u in np.unique(a_units):  # one partner unit's texts in memory at a time
            idx = np.flatnonzero(a_units == u)
            other = own if u == unit else shingle_map(int(u), np.unique(pairs[idx, 0]))
            for i in idx:
                x, y = pairs[i]
                keep[i] = mh.jaccard(other[int(x)], own[int(y)]) >= cfg["threshold"]
    out = pairs[keep]
    storage.write_bytes(out_path, storage.table_to_parquet_bytes(_pairs_table(out), row_group_rows=65536))
    return {"unit": unit, "candidate_pairs": int(len(pairs)), "verified_pairs": int(len(out))}


def components(pairs: np.ndarray) -> tuple[np.ndarray, int]:
    """Keys to remove (sorted) and the number of clusters, from pairs of similar keys.

    Each connected component keeps its smallest key; memory is O(pairs).
    """
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.int64), 0
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, inv = np.unique(pairs.reshape(-1), return_inverse=True)  # sorted: node 0 is the smallest key
    inv = inv.reshape(-1, 2)
    g = coo_matrix((np.ones(len(inv), dtype=np.int8), (inv[:, 0], inv[:, 1])), shape=(len(nodes), len(nodes)))
    n, label = connected_components(g, directed=False)
    first = np.full(n, len(nodes), dtype=np.int64)
    np.minimum.at(first, label, np.arange(len(nodes)))  # smallest node (= key) of each component
    removed = nodes[np.arange(len(nodes)) != first[label]]
    return np.sort(removed), int(n)


def read_pairs(paths: list[str]) -> np.ndarray:
    """All pairs from pair files, shape (n, 2)."""
    got = []
    for p in paths:
        t = storage.read_parquet(p)
        if t.num_rows:
            got.append(np.stack([t.column("a").to_numpy(), t.column("b").to_numpy()], axis=1))
    return np.concatenate(got) if got else np.zeros((0, 2), dtype=np.int64)


def write_removed(removed: np.ndarray, out_path: str) -> None:
    """Writes removed keys in the exact-dedup bucket format, so pack reads both the same way."""
    import pyarrow as pa

    table = pa.table({"key": pa.array(removed, pa.int64())})
    storage.write_bytes(out_path, storage.table_to_parquet_bytes(table, row_group_rows=65536))


def find_near_duplicates(texts: list[str], cfg: dict, num_partitions: int = 4) -> tuple[np.ndarray, int, dict]:
    """In memory, no Ray: the indices of ``texts`` the stage would remove, clusters, and pair counts.

    The same functions as the stage on one unit (used by tests and the benchmark's reference).
    """
    import tempfile

    import pyarrow as pa

    from rayworks.data.clean import unit_key

    with tempfile.TemporaryDirectory() as d:
        docs = f"{d}/u-00000.parquet"
        storage.write_bytes(docs, storage.table_to_parquet_bytes(pa.table({
            "key": pa.array([unit_key(0, i) for i in range(len(texts))], pa.int64()),
            "text": pa.array(texts, pa.large_string())})))
        signature_unit(0, docs, [], cfg, num_partitions, f"{d}/sig.parquet")
        info = [bucket_partition(p, [f"{d}/sig.parquet"], f"{d}/p-{p}.parquet") for p in range(num_partitions)]
        paths = [f"{d}/p-{p}.parquet" for p in range(num_partitions)]
        stats = {"candidate_pairs": sum(i["candidate_pairs"] for i in info)}
        if cfg["verify"]:
            v = verify_unit(0, paths, [docs], cfg, f"{d}/v.parquet")
            paths = [f"{d}/v.parquet"]
            stats["verified_pairs"] = v["verified_pairs"]
        removed, clusters = components(read_pairs(paths))
    return (removed & 0xFFFFFFFF), clusters, stats
