"""Quality rules: Gopher's document rules and C4's line rules, each counted under its own reason.

A document is measured once per rule set (words, lines, n-grams) in Python per document:
the rules need per-document structure (line sets, n-gram counts) that Arrow kernels do not
express; one split into words feeds them all, and the n-gram repetition measures (the
costly ones) run over word ids in NumPy. In drop mode the first failing rule
(in the order of ``GOPHER_RULES``) takes the document; in dry-run mode nothing is dropped
and every failing rule is reported, with the value it measured, so thresholds can be tuned.

C4's rules are transforms: they remove lines (counted per rule as ``c4.*``) and drop a
document only when too few lines remain (or, optionally, when it holds a curly brace).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

# Document drop reasons, in the order the rules run.
GOPHER_RULES = ("quality.word_count", "quality.mean_word_length", "quality.symbol_ratio",
                "quality.ellipsis_lines", "quality.bullet_lines", "quality.alpha_words", "quality.stop_words",
                "quality.duplicate_lines", "quality.duplicate_paragraphs", "quality.top_ngram",
                "quality.duplicate_ngram")
C4_DOC_RULES = ("quality.c4_curly_braces", "quality.c4_too_few_lines")
REASONS = C4_DOC_RULES + GOPHER_RULES
# Line removals (not document drops): counted in the manifest's counts.lines_removed.
C4_LINE_RULES = ("c4.javascript", "c4.lorem_ipsum", "c4.policy", "c4.no_terminal_punct", "c4.short_line")

BULLETS = ("-", "*", "•", "‣", "◦", "⁃", "·", "–")
ELLIPSES = ("...", "…")
TERMINAL = (".", "!", "?", '"', "'", "”", "’")
# Stripped from both ends of a word before stop-word and n-gram comparisons (str.strip: C speed).
PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~“”‘’«»„‚…—–·•¡¿"
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_HAS_LETTER = re.compile(r"[^\W\d_]").search
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier for the n-gram hash (uint64 arithmetic wraps)


@dataclass
class Finding:
    """One rule a document fails: the reason and the measured value."""

    rule: str
    value: float | int
    detail: str = ""  # e.g. which n of an n-gram rule failed


@dataclass
class Verdict:
    """What the rules make of one document: the (possibly line-filtered) text, failures, removed lines."""

    text: str
    failures: list[Finding] = field(default_factory=list)
    removed_lines: list[tuple[str, str]] = field(default_factory=list)  # (rule, line)


def _ngram_stats(ids: np.ndarray, lens: np.ndarray, n: int) -> tuple[int, int, int]:
    """(chars of the most frequent n-gram x its count, chars in n-grams seen more than once, total word chars).

    Characters are counted Gopher's way: words' characters, each word at most once for
    the duplicate measure (overlapping repeats do not count a word twice). ``ids`` are
    word ids (equal words, equal ids); n-grams are compared by a 64-bit polynomial hash
    of their ids, all positions at once in NumPy.
    """
    total = int(lens.sum())
    if len(ids) < n or total == 0:
        return 0, 0, total
    m = len(ids) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _MULT + ids[j:j + m]
    _, inv, counts = np.unique(h, return_inverse=True, return_counts=True)
    per_pos = counts[inv]
    first_top = int(np.argmax(per_pos))  # the first n-gram with the highest count, as Counter.most_common
    top_count = int(per_pos[first_top])
    top_chars = int(lens[first_top:first_top + n].sum()) * top_count if top_count > 1 else 0
    cover = np.zeros(len(ids) + 1, dtype=np.int64)  # +1 at each repeated n-gram's start, -1 after its end
    starts = np.flatnonzero(per_pos > 1)
    np.add.at(cover, starts, 1)
    np.add.at(cover, starts + n, -1)
    dup_chars = int(lens[np.cumsum(cover[:-1]) > 0].sum())
    return top_chars, dup_chars, total


def _repeat_ratios(blocks: list[str]) -> tuple[float, float]:
    """(share of blocks equal to an earlier block, share of characters in those repeats); 0 for none."""
    if not blocks:
        return 0.0, 0.0
    seen: set[str] = set()
    dup = dup_chars = 0
    for b in blocks:
        if b in seen:
            dup += 1
            dup_chars += len(b)
        seen.add(b)
    return dup / len(blocks), dup_chars / max(1, sum(map(len, blocks)))


def gopher_findings(text: str, cfg: dict, stop_first: bool) -> list[Finding]:
    """The Gopher rules ``text`` fails (only the first when ``stop_first``), with measured values."""
    out: list[Finding] = []

    def fail(rule: str, value, detail: str = "") -> bool:
        out.append(Finding(rule, round(value, 4) if isinstance(value, float) else value, detail))
        return stop_first

    words = text.split()
    nw = len(words)
    lo, hi = cfg["min_words"], cfg["max_words"]
    if (lo is not None and nw < lo) or (hi is not None and nw > hi):
        if fail("quality.word_count", nw):
            return out
    if nw == 0:  # every other measure divides by the word count
        return out
    mean_len = sum(map(len, words)) / nw
    lo, hi = cfg["min_mean_word_length"], cfg["max_mean_word_length"]
    if (lo is not None and mean_len < lo) or (hi is not None and mean_len > hi):
        if fail("quality.mean_word_length", mean_len):
            return out
    if cfg["max_symbol_word_ratio"] is not None:
        r = (text.count("#") + text.count("...") + text.count("…")) / nw
        if r > cfg["max_symbol_word_ratio"] and fail("quality.symbol_ratio", r):
            return out
    lines = [ln.strip() for ln in text.split("\n")]
    lines = [ln for ln in lines if ln]
    if cfg["max_ellipsis_line_ratio"] is not None and lines:
        r = sum(ln.endswith(ELLIPSES) for ln in lines) / len(lines)
        if r > cfg["max_ellipsis_line_ratio"] and fail("quality.ellipsis_lines", r):
            return out
    if cfg["max_bullet_line_ratio"] is not None and lines:
        r = sum(ln.startswith(BULLETS) for ln in lines) / len(lines)
        if r > cfg["max_bullet_line_ratio"] and fail("quality.bullet_lines", r):
            return out
    if cfg["min_alpha_word_ratio"] is not None:
        r = sum(1 for w in words if _HAS_LETTER(w)) / nw
        if r < cfg["min_alpha_word_ratio"] and fail("quality.alpha_words", r):
            return out
    norm = [w.lower().strip(PUNCT) for w in words]
    if cfg["min_stop_words"] is not None:
        stop = set(cfg["stop_words"])
        k = sum(1 for w in norm if w in stop)
        if k < cfg["min_stop_words"] and fail("quality.stop_words", k):
            return out
    if lines and (cfg["max_duplicate_line_ratio"] is not None or cfg["max_duplicate_line_char_ratio"] is not None):
        r_lines, r_chars = _repeat_ratios(lines)
        if cfg["max_duplicate_line_ratio"] is not None and r_lines > cfg["max_duplicate_line_ratio"]:
            if fail("quality.duplicate_lines", r_lines):
                return out
        elif cfg["max_duplicate_line_char_ratio"] is not None and r_chars > cfg["max_duplicate_line_char_ratio"]:
            if fail("quality.duplicate_lines", r_chars):
                return out
    if cfg["max_duplicate_paragraph_ratio"] is not None or cfg["max_duplicate_paragraph_char_ratio"] is not None:
        # Gopher's paragraphs are blocks separated by blank lines; a one-paragraph text repeats nothing.
        paras = [p.strip() for p in _PARAGRAPH_BREAK.split(text)]
        paras = [p for p in paras if p]
        r_count, r_chars = _repeat_ratios(paras)
        if cfg["max_duplicate_paragraph_ratio"] is not None and r_count > cfg["max_duplicate_paragraph_ratio"]:
            if fail("quality.duplicate_paragraphs", r_count):
                return out
        elif (cfg["max_duplicate_paragraph_char_ratio"] is not None
              and r_chars > cfg["max_duplicate_paragraph_char_ratio"]):
            if fail("quality.duplicate_paragraphs", r_chars, "chars"):
                return out
    if cfg["max_top_ngram_ratio"] or cfg["max_duplicate_ngram_ratio"]:
        lw = [w for w in norm if w]
        vocab: dict[str, int] = {}
        ids = np.fromiter((vocab.setdefault(w, len(vocab) + 1) for w in lw), dtype=np.uint64, count=len(lw))
        lens = np.fromiter(map(len, lw), dtype=np.int64, count=len(lw))
        for n, limit in sorted((int(k), v) for k, v in cfg["max_top_ngram_ratio"].items()):
            top, _, total = _ngram_stats(ids, lens, n)
            if total and top / total > limit:
                if fail("quality.top_ngram", top / total, f"n={n}"):
                    return out
                break
        for n, limit in sorted((int(k), v) for k, v in cfg["max_duplicate_ngram_ratio"].items()):
            _, dup, total = _ngram_stats(ids, lens, n)
            if total and dup / total > limit:
                if fail("quality.duplicate_ngram", dup / total, f"n={n}"):
                    return out
                break
    return out


def _line_rule(line: str, cfg: dict, policy: tuple[str, ...]) -> str | None:
    """The C4 rule that removes ``line``, or None (cheap substring rules first)."""
    low = line.lower()
    if cfg["javascript"] and "javascript" in low:
        return "c4.javascript"
    if cfg["lorem_ipsum"] and "lorem ipsum" in low:
        return "c4.lorem_ipsum"
    if cfg["policy"] and any(p in low for p in policy):
        return "c4.policy"
    if cfg["terminal_punctuation"] and not line.rstrip().endswith(TERMINAL):
        return "c4.no_terminal_punct"
    if cfg["min_words_per_line"] is not None and len(line.split()) < cfg["min_words_per_line"]:
        return "c4.short_line"
    return None


def c4_verdict(text: str, cfg: dict, dry_run: bool) -> Verdict:
    """Applies the C4 rules; in dry-run mode the text stays whole and removals are only reported."""
    if cfg["max_curly_braces"] is not None and text.count("{") > cfg["max_curly_braces"]:
        return Verdict(text, [Finding("quality.c4_curly_braces", text.count("{"))])
    policy = tuple(cfg["policy_phrases"])
    kept, removed = [], []
    for line in text.split("\n"):
        if not line.strip():
            kept.append(line)  # blank lines keep paragraphs apart; they count as neither kept nor removed
            continue
        rule = _line_rule(line, cfg, policy)
        if rule:
            removed.append((rule, line))
        else:
            kept.append(line)
    n_kept = sum(1 for ln in kept if ln.strip())
    # A document left with no line at all is dropped whatever min_lines says.
    failures = [Finding("quality.c4_too_few_lines", n_kept)] if n_kept < max(1, cfg["min_lines"]) else []
    new_text = text if dry_run or not removed else re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    return Verdict(new_text, failures, removed)


def judge(text: str, cfg: dict) -> Verdict:
    """Runs the configured rule sets on one document (``cfg``: a dumped QualityConfig).

    C4 runs first, so the Gopher rules measure the text the document would keep.
    """
    dry = cfg["dry_run"]
    v = Verdict(text)
    if cfg.get("c4"):
        v = c4_verdict(text, cfg["c4"], dry)
        if v.failures and not dry:
            return v
    if cfg.get("gopher"):
        v.failures += gopher_findings(v.text, cfg["gopher"], stop_first=not dry)
    return v


def apply_quality(texts: list[str], cfg: dict) -> tuple[list[str | None], Counter, Counter, list[tuple[int, Verdict]]]:
    """Judges a batch: new texts (None where dropped), drops by reason, lines removed by rule,
    and the (index, verdict) of every document some rule failed or trimmed (for inspection)."""
    drops: Counter = Counter()
    lines: Counter = Counter()
    out: list[str | None] = []
    flagged: list[tuple[int, Verdict]] = []
    for i, t in enumerate(texts):
        v = judge(t, cfg)
        if v.failures or v.removed_lines:
            flagged.append((i, v))
        if cfg["dry_run"]:
            out.append(t)
            continue
        lines.update(rule for rule, _ in v.removed_lines)
        if v.failures:
            drops[v.failures[0].rule] += 1
            out.append(None)
        else:
            out.append(v.text)
    return out, drops, lines, flagged
