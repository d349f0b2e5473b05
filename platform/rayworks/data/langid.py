"""Language identification with lingua (``lingua-language-detector``).

lingua ships its n-gram models inside the wheel (nothing is downloaded at run time) and
runs in Rust. A detector is built once per worker process for the configured language
set and kept (its models load lazily on first use and stay loaded); restricting the set
to the languages a corpus can hold makes it both faster and more accurate. Each document
gets its most likely language and that language's confidence (0-1), read from the first
``max_chars`` characters (the start of a document decides its language; reading all of a
long one only costs time).

Drops: ``lang.other`` (best language not in the keep-list; also text with no letters) and
``lang.low_confidence`` (kept language, confidence below ``min_confidence``).
"""

from __future__ import annotations

import threading
from collections import Counter

REASONS = ("lang.other", "lang.low_confidence")
UNKNOWN = "xx"  # text lingua cannot place (no letters): never in a keep-list

_lock = threading.Lock()
_detectors: dict[tuple, object] = {}


def detector(languages: tuple[str, ...], low_accuracy: bool):
    """The process-wide detector for this language set (built on first use)."""
    key = (tuple(sorted(languages)), low_accuracy)
    with _lock:
        d = _detectors.get(key)
        if d is None:
            try:
                from lingua import IsoCode639_1, LanguageDetectorBuilder
            except ImportError as exc:
                raise ImportError("language ID needs lingua-language-detector: pip install "
                                  "lingua-language-detector (it is in rayworks' dependencies)") from exc
            b = LanguageDetectorBuilder.from_iso_codes_639_1(*[getattr(IsoCode639_1, c.upper()) for c in key[0]])
            if low_accuracy:
                b = b.with_low_accuracy_mode()
            d = _detectors[key] = b.build()
        return d


def identify(texts: list[str], cfg: dict) -> list[tuple[str, float]]:
    """(ISO 639-1 code, confidence) of each text's most likely language (``UNKNOWN``, 0.0 if none)."""
    det = detector(tuple(cfg["languages"]), cfg["low_accuracy"])
    heads = [t[: cfg["max_chars"]] for t in texts]
    out = []
    for values in det.compute_language_confidence_values_in_parallel(heads):
        best = values[0] if values else None
        if best is None or best.value <= 0:
            out.append((UNKNOWN, 0.0))
        else:
            out.append((best.language.iso_code_639_1.name.lower(), float(best.value)))
    return out


def verdicts(langs: list[tuple[str, float]], cfg: dict) -> list[str | None]:
    """The drop reason for each (language, confidence), or None to keep it."""
    keep, floor = set(cfg["keep"]), cfg["min_confidence"]
    return [("lang.other" if code not in keep else "lang.low_confidence" if conf < floor else None)
            for code, conf in langs]


def language_counts(langs: list[tuple[str, float]]) -> Counter:
    """Documents per detected language (for the manifest)."""
    return Counter(code for code, _ in langs)
