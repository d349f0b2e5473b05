"""Cleaning: Unicode normalisation, control characters, length limits; one unit at a time.

After Unicode normalisation (Python's, with its quick check), the per-document rules run as
vectorised Arrow kernels (RE2 regexes in C++), so a batch is cleaned without a Python loop
per rule and document.
:func:`clean_unit` reads one work unit, cleans it and writes its surviving documents
with their content hash and global key to ``_work/clean/u-NNNNN.parquet``.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections import Counter

from rayworks import storage
from rayworks.data.read import BadFile, read_part

# C0 and C1 controls except tab (09) and newline (0a); CR (0d) is turned into LF first.
CONTROL_RE = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x{7f}-\x{9f}]"


def clean_texts(texts: list[str], normalize: str = "NFC", strip_control: bool = True,
                min_chars: int = 1, max_chars: int = 1_000_000) -> tuple[list[str], Counter]:
    """Cleans a batch; returns the kept texts (in order) and drop counts by reason."""
    import pyarrow as pa
    import pyarrow.compute as pc

    drops: Counter = Counter()
    if not texts:
        return [], drops
    if normalize != "none":
        # Python's own normaliser, not pyarrow's utf8_normalize: pyarrow 25 (the newest MLflow
        # allows) returns NFC/NFKC input uncomposed ("e" + U+0301 stays two code points). The
        # quick check makes already-normalised text (nearly all of it) cost one scan.
        texts = [t if unicodedata.is_normalized(normalize, t) else unicodedata.normalize(normalize, t)
                 for t in texts]
    arr = pa.array(texts, type=pa.large_string())
    if strip_control:
        arr = pc.replace_substring(arr, "\r\n", "\n")
        arr = pc.replace_substring(arr, "\r", "\n")
        arr = pc.replace_substring_regex(arr, CONTROL_RE, "")
    arr = pc.utf8_trim_whitespace(arr)
    n = pc.utf8_length(arr).to_numpy(zero_copy_only=False)
    empty = n == 0
    short = ~empty & (n < min_chars)
    long_ = n > max_chars
    drops.update({"empty": int(empty.sum()), "too_short": int(short.sum()), "too_long": int(long_.sum())})
    keep = ~(empty | short | long_)
    kept = arr.filter(pa.array(keep)).to_pylist() if not keep.all() else arr.to_pylist()
    return kept, +drops


def content_hash(text: str) -> bytes:
    """16-byte BLAKE2b of the UTF-8 text: the identity used for exact dedup."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def score(h: bytes, salt: bytes, seed: int) -> float:
    """A uniform number in [0, 1) derived from a content hash (split and sample decisions)."""
    d = hashlib.blake2b(h + salt + seed.to_bytes(8, "little"), digest_size=8).digest()
    return int.from_bytes(d, "little") / 2**64


def unit_key(unit: int, index: int) -> int:
    """A document's global key: input order is key order (the first copy has the smallest key)."""
    return (unit << 32) | index


def clean_unit(unit: dict, files: list[dict], clean_cfg: dict, excluded: list[str], out_path: str) -> dict:
    """Reads, cleans and hashes one unit; writes the kept documents; returns its stats.

    A bad file inside the unit is reported in ``bad_files`` and its documents are left
    out (even those read before the error), so a skipped file is skipped entirely.
    """
    import pyarrow as pa

    texts: list[str] = []
    stats = Counter()
    drops: Counter = Counter()
    bad, skipped_parts = [], 0
    max_file_bytes = 8 * clean_cfg["max_chars"] + 4096
    for part in unit["parts"]:
        f = files[part["file"]]
        if f["path"] in excluded:
            skipped_parts += 1
            continue
        n_texts, stats_before, drops_before = len(texts), stats.copy(), drops.copy()
        try:
            for raw, st in read_part(f, part["start"], part["end"], clean_cfg["on_decode_error"], max_file_bytes):
                kept, d = clean_texts(raw, clean_cfg["normalize"], clean_cfg["strip_control"],
                                      clean_cfg["min_chars"], clean_cfg["max_chars"])
                texts.extend(kept)
                drops.update(d)
                drops["undecodable"] += st.get("undecodable", 0)
                drops["too_long"] += st.get("too_long", 0)
                stats["documents_read"] += st["read"]
                stats["replaced_undecodable"] += st.get("replaced", 0)
        except BadFile as exc:
            del texts[n_texts:]
            stats, drops = stats_before, drops_before
            bad.append({"path": f["path"], "error": str(exc)})
            continue
        end = f["size_bytes"] if part["end"] is None else part["end"]
        stats["bytes_read"] += end - part["start"]
    u = unit["unit"]
    keys = [unit_key(u, i) for i in range(len(texts))]
    columns: dict[str, list] = {}
    curated: dict = {}
    from rayworks.data import curate

    if curate.enabled(clean_cfg):  # PII, quality rules, language ID, decontamination (data/curate.py)
        curated = curate.curate(texts, u, clean_cfg)
        texts, keys, columns = curated["texts"], curated["keys"], curated["columns"]
        drops.update(curated["dropped"])
        if curated["records"]:  # dry-run findings; the job merges every unit's into the inspection file
            storage.write_bytes(inspect_path(out_path), curate.records_jsonl(curated["records"]))
    hashes = [content_hash(t) for t in texts]
    table = pa.table({
        "key": pa.array(keys, pa.int64()),
        "hash": pa.array(hashes, pa.binary(16)),
        "text": pa.array(texts, pa.large_string()),
        **({"lang": pa.array(columns["lang"], pa.string()),
            "lang_score": pa.array(columns["lang_score"], pa.float32())} if columns else {}),
    })
    storage.write_bytes(out_path, storage.table_to_parquet_bytes(table, row_group_rows=8192, compression="lz4"))
    return {"unit": u, "documents_read": stats["documents_read"], "documents_kept": len(texts),
            "dropped": {k: v for k, v in sorted((+drops).items())},
            "replaced_undecodable": stats["replaced_undecodable"], "bytes_read": stats["bytes_read"],
            "chars_kept": sum(len(t) for t in texts), "bad_files": bad, "excluded": sorted(excluded),
            "skipped_parts": skipped_parts,
            **{k: dict(sorted(curated[k].items())) for k in ("lines_removed", "pii_redacted", "languages", "inspected")
               if curated}}


def inspect_path(unit_out_path: str) -> str:
    """Where a unit's dry-run inspection records go (beside its cleaned Parquet)."""
    return unit_out_path.removesuffix(".parquet") + ".inspect.jsonl"


def sample_unit(path: str, threshold: float, seed: int) -> list[tuple[int, bytes, str]]:
    """(key, hash, text) of a unit's documents whose sample score is below threshold."""
    t = storage.read_parquet(path)
    keys, hashes = t.column("key").to_pylist(), t.column("hash").to_pylist()
    pick = [i for i, h in enumerate(hashes) if score(h, b"sample", seed) < threshold]
    texts = t.column("text").take(pick).to_pylist() if pick else []
    return [(keys[i], hashes[i], s) for i, s in zip(pick, texts)]
