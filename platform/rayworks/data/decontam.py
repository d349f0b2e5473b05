"""Decontamination: find documents that share a word n-gram with an evaluation set.

Text is normalised the same way on both sides (lower-cased, Unicode word characters only,
so punctuation, case and spacing differences do not hide a match) and cut into words.
Each word is hashed once (BLAKE2b, 8 bytes) and an n-gram's hash is a polynomial over its
words' hashes, computed for all positions of a document at once in NumPy (uint64
arithmetic wraps, which is what the polynomial wants). 64-bit hashes make a false match
among millions of n-grams vanishingly unlikely, and the result is the same on every
machine and process (no Python ``hash()`` salt).

The driver reads the evaluation JSONL once (:func:`eval_ngrams`), writes the sorted hash
array to the run's ``_work/`` as ``.npy``, and every clean task memory-maps that one file
(cached per process), so a large evaluation set is neither re-parsed nor pickled per task.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading

import numpy as np

REASON = "decontam.ngram"
_WORD = re.compile(r"\w+")
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier (golden ratio): mixes word positions

_lock = threading.Lock()
_loaded: dict[str, np.ndarray] = {}


def words(text: str) -> list[str]:
    """Normalised words: lower-cased runs of Unicode word characters."""
    return _WORD.findall(text.lower())


def _word_hashes(ws: list[str], cache: dict[str, int] | None = None) -> np.ndarray:
    out = np.empty(len(ws), dtype=np.uint64)
    for i, w in enumerate(ws):
        h = cache.get(w) if cache is not None else None
        if h is None:
            h = int.from_bytes(hashlib.blake2b(w.encode("utf-8"), digest_size=8).digest(), "little")
            if cache is not None:
                cache[w] = h
        out[i] = h
    return out


def ngram_hashes(ws: list[str], n: int, cache: dict[str, int] | None = None) -> np.ndarray:
    """The hash of every word n-gram of ``ws`` (empty if fewer than n words)."""
    if len(ws) < n:
        return np.empty(0, dtype=np.uint64)
    wh = _word_hashes(ws, cache)
    m = len(ws) - n + 1
    acc = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):  # acc = sum(wh[i+j] * MULT^(n-1-j)), Horner's scheme over positions
            acc = acc * _MULT + wh[j:j + m]
    return acc


def eval_ngrams(path: str, fields: list[str], n: int) -> tuple[np.ndarray, dict]:
    """Sorted unique n-gram hashes of an evaluation JSONL, and counts for the manifest."""
    from rayworks import storage
    from rayworks.errors import ConfigError

    if not storage.is_file(path):
        raise ConfigError(f"decontam.path: {path} is not a file; give the evaluation set as a JSON Lines file")
    hashes, cache = [], {}
    stats = {"eval_texts": 0, "eval_texts_shorter_than_n": 0}
    for lineno, line in enumerate(storage.read_bytes(path).decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"decontam.path: {path}:{lineno} is not valid JSON ({exc.msg}); "
                              "give a JSON Lines file") from None
        missing = [k for k in fields if not isinstance(row.get(k) if isinstance(row, dict) else None, str)]
        if missing:
            raise ConfigError(f"decontam.path: {path}:{lineno} has no text field(s) {missing}; "
                              "set decontam.text_fields to the fields holding the text")
        ws = words(" ".join(row[k] for k in fields))
        stats["eval_texts"] += 1
        if len(ws) < n:  # shorter than one n-gram: it cannot be matched at this n
            stats["eval_texts_shorter_than_n"] += 1
            continue
        hashes.append(ngram_hashes(ws, n, cache))
    arr = np.unique(np.concatenate(hashes)) if hashes else np.empty(0, dtype=np.uint64)
    stats["eval_ngrams"] = int(len(arr))
    return arr, stats


def to_npy(arr: np.ndarray) -> bytes:
    """The .npy bytes of the n-gram array (what :func:`load` reads)."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def load(path: str) -> np.ndarray:
    """The n-gram array written by the driver, loaded once per process."""
    with _lock:
        arr = _loaded.get(path)
        if arr is None:
            from rayworks import storage

            arr = _loaded[path] = np.load(io.BytesIO(storage.read_bytes(path)), allow_pickle=False)
        return arr


def matches(texts: list[str], table: np.ndarray, n: int) -> list[int]:
    """For each text, how many of its n-grams occur in the evaluation set (0: clean)."""
    out, cache = [], {}
    if len(table) == 0:
        return [0] * len(texts)
    for t in texts:
        h = ngram_hashes(words(t), n, cache)
        if len(h) == 0:
            out.append(0)
            continue
        pos = np.searchsorted(table, h)
        pos[pos == len(table)] = 0
        out.append(int((table[pos] == h).sum()))
    return out
