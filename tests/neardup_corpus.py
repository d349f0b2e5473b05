"""A real corpus (paragraphs of Python's own docs, pydoc_data.topics) with planted near-duplicates.

Each planted variant copies a base paragraph and replaces a run of words at a random
position, as many as bring the true Jaccard of the two documents' shingle sets (word
5-grams, as rayworks computes them) closest to a target level. The variants come after
all the base paragraphs, so a variant has the larger key and is the one a near-dup stage
should remove when its similarity reaches the threshold.
"""

from __future__ import annotations

import random

LEVELS = (0.95, 0.85, 0.7, 0.5)


def paragraphs(min_words: int = 0) -> list[str]:
    """The distinct paragraphs of pydoc_data.topics, in a fixed order."""
    import pydoc_data.topics as t

    seen, out = set(), []
    for key in sorted(t.topics):
        for p in t.topics[key].split("\n\n"):
            p = p.strip()
            if p and p not in seen and len(p.split()) >= min_words:
                seen.add(p)
                out.append(p)
    return out


def make_variant(text: str, target: float, rng: random.Random, cfg: dict) -> tuple[str, float]:
    """A copy of ``text`` with words replaced so that its true Jaccard to ``text`` is close to ``target``."""
    from rayworks.data import minhash as mh

    words = text.split(" ")
    # One contiguous run of replaced words (an edited passage), starting in the first half: a
    # run of k words changes about k + 4 word 5-grams, so k tunes the Jaccard in fine steps.
    # Near 1 even one inner word is too coarse (it changes 5 of ~60 shingles): rewrite the ending.
    start = len(words) if target >= 0.9 else rng.randrange(0, max(1, len(words) // 2))
    order = list(range(start, len(words))) + list(range(start - 1, -1, -1))
    fresh = [f"zq{rng.randrange(10**9)}" for _ in words]
    base = mh.shingles(text, cfg["shingle"], cfg["shingle_size"], cfg["seed"])

    def edit(k: int) -> tuple[str, float]:
        w = list(words)
        for i in order[:k]:
            w[i] = fresh[i]
        v = " ".join(w)
        return v, mh.jaccard(base, mh.shingles(v, cfg["shingle"], cfg["shingle_size"], cfg["seed"]))

    lo, hi = 1, len(words)  # Jaccard falls as k grows: bisect for the k closest to target
    while lo < hi:
        mid = (lo + hi) // 2
        if edit(mid)[1] > target:
            lo = mid + 1
        else:
            hi = mid
    return min((edit(k) for k in {max(1, lo - 1), lo}), key=lambda vj: abs(vj[1] - target))


def planted(cfg: dict, per_level: int = 30, seed: int = 0, min_words: int = 60,
            repeat: int = 1, min_doc_words: int = 0) -> tuple[list[str], list[dict]]:
    """The corpus (all paragraphs, ``repeat`` times with a tag, then the variants) and the planted pairs.

    Each pair is ``{"base": index, "variant": index, "level": target, "jaccard": measured}``.
    """
    rng = random.Random(seed)
    texts = paragraphs(min_doc_words)
    n_real = len(texts)
    for r in range(1, repeat):  # a bigger corpus for the benchmark: each copy's words shuffled, so
        for t in texts[:n_real]:  # it shares (almost) no 5-gram with the original or other copies
            w = t.split(" ")
            rng.shuffle(w)
            texts.append(" ".join(w))
    long_ = [i for i, t in enumerate(texts[:n_real]) if len(t.split()) >= min_words]
    bases = rng.sample(long_, min(len(long_), per_level * len(LEVELS)))
    pairs, variants = [], []
    for n, b in enumerate(bases):
        level = LEVELS[n % len(LEVELS)]
        v, j = make_variant(texts[b], level, rng, cfg)
        pairs.append({"base": b, "variant": len(texts) + len(variants), "level": level, "jaccard": j})
        variants.append(v)
    return texts + variants, pairs
