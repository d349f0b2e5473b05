"""MinHash signatures and LSH band hashes, vectorised over a batch of documents.

A document is a *set* of shingles (word n-grams of its normalised words, or character
n-grams of its lower-cased, whitespace-collapsed text), each hashed to 64 bits: words
with xxhash's XXH64 under the configured seed (one C call per word), n-grams combined
from their word or code-point hashes with numpy (no Python loop per n-gram). The
signature holds, for each of ``num_perm`` hash functions ``h_i(x) = a_i * x + b_i mod
2^64`` (``a_i`` odd, so each is a bijection of the 64-bit shingle hashes), the minimum
over the document's shingles. Two documents agree on one signature entry with
probability equal to their Jaccard similarity, so ``bands`` bands of ``rows`` entries
make them share at least one band with probability ``1 - (1 - J^rows)^bands``.

Everything here is a pure function of (text, parameters): the same document gets the
same signature on any worker, which the near-dup stage's determinism rests on.
"""

from __future__ import annotations

import re

import numpy as np

WORD_RE = re.compile(r"[^\W_]+")  # letters and digits; punctuation and underscores separate words
NUMBER_RE = re.compile(r"\d+([.,]\d+)?")
SPACE_RE = re.compile(r"\s+")
# Odd 64-bit constants (from splitmix64 / xxhash): multiplication by them mixes bits and is invertible.
K1 = np.uint64(0x9E3779B97F4A7C15)
K2 = np.uint64(0xBF58476D1CE4E5B9)
K3 = np.uint64(0x94D049BB133111EB)
MASK64 = (1 << 64) - 1
ROWS_PER_CHUNK = 8192  # shingles hashed at once: ROWS_PER_CHUNK x num_perm x 8 bytes of scratch


def fmix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that spreads every input bit over the output."""
    x = x ^ (x >> np.uint64(30))
    x = x * K2
    x = x ^ (x >> np.uint64(27))
    x = x * K3
    return x ^ (x >> np.uint64(31))


def _ngrams(units: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Hashes of all windows of ``size`` consecutive unit hashes (one window if fewer)."""
    n = max(1, len(units) - size + 1)
    h = np.full(n, (seed * int(K1) + int(K3)) & MASK64, dtype=np.uint64)
    for j in range(min(size, len(units))):
        # rotate-xor-multiply: order-sensitive, so "a b" and "b a" differ
        h = ((h << np.uint64(23)) | (h >> np.uint64(41))) ^ units[j:j + n]
        h = h * K1
    return fmix64(h)


def shingles(text: str, kind: str, size: int, seed: int) -> np.ndarray:
    """The sorted, unique 64-bit shingle hashes of one document (empty if it has no words)."""
    import xxhash

    if kind == "word":
        words = WORD_RE.findall(normalize_words(text))
        if not words:
            return np.zeros(0, dtype=np.uint64)
        h = xxhash.xxh64_intdigest
        units = np.fromiter((h(w.encode(), seed) for w in words), dtype=np.uint64, count=len(words))
    else:
        s = SPACE_RE.sub(" ", text.lower()).strip()
        if not s:
            return np.zeros(0, dtype=np.uint64)
        units = fmix64(np.frombuffer(s.encode("utf-32-le"), dtype="<u4").astype(np.uint64) ^ np.uint64(seed))
    return np.unique(_ngrams(units, size, seed))


def normalize_words(text: str) -> str:
    """Lower-cased, numbers as "0", diacritics dropped: the normalisation FineWeb's dedup applies
    (datatrove's ``simplify_text``), so that "Version 3.11" and "version 3.12" share their shingles."""
    import unicodedata

    text = NUMBER_RE.sub("0", text.lower())
    if not text.isascii():
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    return text


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of the ``num_perm`` hash functions; a is odd. Fixed by the seed alone."""
    rng = np.random.Generator(np.random.PCG64(seed))
    a = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, size=num_perm,
                                                                                           dtype=np.uint64)
    return a, b


def signatures(shingle_sets: list[np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash signatures, shape (documents, num_perm) uint64; every set must be non-empty."""
    sizes = np.fromiter((len(s) for s in shingle_sets), dtype=np.int64, count=len(shingle_sets))
    out = np.empty((len(shingle_sets), len(a)), dtype=np.uint64)
    if not len(shingle_sets):
        return out
    assert sizes.min() > 0, "documents without shingles have no signature"
    flat = np.concatenate(shingle_sets)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    # Hash a chunk of shingles with every permutation and take each document's minimum; a
    # document spanning chunks is finished by an elementwise min with its previous partial.
    doc = 0
    pos = 0
    while pos < len(flat):
        end = min(len(flat), pos + ROWS_PER_CHUNK)
        # (num_perm, chunk) layout: each document's shingles are contiguous in a row, which makes
        # the segmented min several times faster than over columns.
        vals = a[:, None] * flat[None, pos:end]  # wraps mod 2^64 by design
        vals += b[:, None]
        first = int(np.searchsorted(starts, pos, side="right")) - 1
        last = int(np.searchsorted(starts, end - 1, side="right")) - 1
        offs = np.maximum(starts[first:last + 1], pos) - pos
        mins = np.minimum.reduceat(vals, offs, axis=1).T
        if first < doc:  # continues a document started in the previous chunk
            mins[0] = np.minimum(mins[0], out[first])
        out[first:last + 1] = mins
        doc = last + 1
        pos = end
    return out


def band_hashes(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit hash per (document, band), shape (documents, bands); the band index is mixed in."""
    n = sigs.shape[0]
    h = np.broadcast_to(np.arange(bands, dtype=np.uint64) * K3 + K1, (n, bands)).copy()
    v = sigs.reshape(n, bands, rows)
    for r in range(rows):
        h = fmix64(h ^ v[:, :, r])
    return h


def jaccard(x: np.ndarray, y: np.ndarray) -> float:
    """True Jaccard similarity of two sorted, unique shingle-hash arrays."""
    if not len(x) and not len(y):
        return 1.0
    inter = len(np.intersect1d(x, y, assume_unique=True))
    return inter / (len(x) + len(y) - inter)


def collision_probability(j: float, bands: int, rows: int) -> float:
    """Probability that two documents of Jaccard ``j`` share at least one band."""
    return 1.0 - (1.0 - j ** rows) ** bands
