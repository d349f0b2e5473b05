"""PII redaction: e-mail addresses, IP addresses and phone numbers become placeholders.

The patterns run as RE2 regexes inside Arrow (``pyarrow.compute``), over a whole batch at
a time, in C++: linear-time matching (no catastrophic backtracking on hostile input) and
no Python loop per document. RE2 has no look-around, so boundaries are ``\\b`` and the
patterns are shaped so that common look-alikes stay untouched: Python slices (``a[1::2]``),
dates (``2026-11-28``), version numbers with fewer than four parts, times (``12:30:45``).

Kinds are applied in a fixed order (e-mail first: an address may hold digits that look
like a phone number), and counted per kind as ``pii.<kind>`` (matches replaced).
"""

from __future__ import annotations

from collections import Counter

PLACEHOLDERS = {"email": "<EMAIL>", "ipv6": "<IP_ADDRESS>", "ipv4": "<IP_ADDRESS>", "phone": "<PHONE>"}

_H = "[0-9A-Fa-f]{1,4}"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
PATTERNS = {
    "email": r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b",
    # Full form (8 groups), or "::"-compressed with at least three groups in all; the
    # loopback "::1" alone is left alone, since "[::1]" is also a Python slice.
    "ipv6": (rf"\b(?:{_H}:){{7}}{_H}\b"
             rf"|\b{_H}(?::{_H}){{1,5}}::{_H}(?::{_H}){{0,5}}\b"
             rf"|\b{_H}::{_H}(?::{_H}){{1,5}}\b"),
    "ipv4": rf"\b{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}\b",
    # North American forms ((555) 123-4567, 555-123-4567, +1 555 123 4567) and international
    # ones that start with "+" (+44 20 7946 0958, +49 30 1234567).
    "phone": (r"(?:\+1[ .-]?)?(?:\([0-9]{3}\)[ .-]?|\b[0-9]{3}[.-])[0-9]{3}[.-][0-9]{4}\b"
              r"|\+[1-9][0-9]{0,2}[ .-][0-9]{1,4}[ .-][0-9]{3,8}(?:[ .-][0-9]{2,8})?\b"),
}
ORDER = ("email", "ipv6", "ipv4", "phone")
REASONS = tuple(f"pii.{k}" for k in ORDER)


def kinds(cfg: dict) -> list[str]:
    """The kinds a dumped PiiConfig turns on, in application order."""
    on = {"email": cfg["email"], "ipv6": cfg["ip"], "ipv4": cfg["ip"], "phone": cfg["phone"]}
    return [k for k in ORDER if on[k]]


def redact(texts: list[str], cfg: dict) -> tuple[list[str], Counter]:
    """Redacts a batch; returns the new texts (same order and length) and matches per ``pii.<kind>``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    counts: Counter = Counter()
    if not texts:
        return [], counts
    arr = pa.array(texts, type=pa.large_string())
    for kind in kinds(cfg):
        n = int(pc.sum(pc.count_substring_regex(arr, PATTERNS[kind])).as_py() or 0)
        if n:
            counts[f"pii.{kind}"] += n
            arr = pc.replace_substring_regex(arr, PATTERNS[kind], PLACEHOLDERS[kind])
    return arr.to_pylist(), counts
