"""Curation of one unit's cleaned documents: PII -> quality rules -> language -> decontamination.

Runs inside :func:`rayworks.data.clean.clean_unit`, after cleaning and before hashing,
so exact dedup, near-dup and the tokenizer all see the curated text. The order matters:
redaction first (a placeholder, not an address, is what every later stage and the
tokenizer see), then the cheap-to-explain quality rules, then language ID on what is
left (the slowest stage reads the fewest documents), then decontamination of the text
that would be trained on.

Every document keeps the key it had after cleaning (``unit << 32 | index``), so keys stay
in input order, the inspection file can name a document whatever later stages do, and
dropped documents simply leave gaps.
"""

from __future__ import annotations

import json
from collections import Counter

from rayworks.data import decontam, langid, pii, quality

CURATION = ("pii", "quality", "language", "decontam")  # PrepJob fields, in the order they run
TEXT_PREVIEW = 200
# Counts a unit reports beyond drops, summed into the manifest's counts.
EXTRA_COUNTS = ("lines_removed", "pii_redacted", "languages", "inspected")


def enabled(cfg: dict) -> bool:
    """Whether a clean config (with the curation keys) turns any curation stage on."""
    return any(cfg.get(k) for k in CURATION)


def _inspector(cfg: dict):
    """A predicate choosing which documents go into the inspection file (by content hash)."""
    q = cfg.get("quality") or {}
    frac = q.get("inspect_fraction", 1.0)
    if frac >= 1.0:
        return lambda text: True
    from rayworks.data.clean import content_hash, score

    return lambda text: score(content_hash(text), b"inspect", 0) < frac


def curate(texts: list[str], unit: int, cfg: dict) -> dict:
    """Runs the configured stages over one unit's texts.

    Returns ``texts`` and ``keys`` of the survivors, ``columns`` to add to the unit's
    Parquet (``lang``, ``lang_score`` when language ID runs), and counts: ``dropped`` (by
    reason), ``lines_removed`` (by C4 rule), ``pii_redacted`` (by kind), ``languages``
    (documents per detected language), ``inspected`` (records per rule) and ``records``
    (inspection-file rows, in key order).
    """
    keys = [(unit << 32) | i for i in range(len(texts))]
    drops, lines, redacted, inspected = Counter(), Counter(), Counter(), Counter()
    records: list[dict] = []
    wanted = _inspector(cfg)

    def record(key: int, text: str, stage: str, rule: str, value, detail: str = "") -> None:
        if wanted(text):
            inspected[rule] += 1
            records.append({"key": key, "stage": stage, "rule": rule, "value": value, "detail": detail,
                            "text": text[:TEXT_PREVIEW]})

    if cfg.get("pii"):
        texts, redacted = pii.redact(texts, cfg["pii"])

    if cfg.get("quality"):
        qcfg = cfg["quality"]
        new, d, lines, flagged = quality.apply_quality(texts, qcfg)
        drops.update(d)
        if qcfg["dry_run"]:
            for i, v in flagged:
                for f in v.failures:
                    record(keys[i], texts[i], "quality", f.rule, f.value, f.detail)
                for rule, line in v.removed_lines:  # value: the line's word count; detail: the line
                    record(keys[i], texts[i], "quality", rule, len(line.split()), line[:TEXT_PREVIEW])
        keys, texts = _survivors(keys, new)

    columns: dict[str, list] = {}
    langs: Counter = Counter()
    if cfg.get("language"):
        lcfg = cfg["language"]
        found = langid.identify(texts, lcfg)
        langs = langid.language_counts(found)
        why = langid.verdicts(found, lcfg)
        if lcfg["dry_run"]:
            for k, t, w, (code, conf) in zip(keys, texts, why, found):
                if w:
                    record(k, t, "language", w, round(conf, 4), f"language={code}")
            why = [None] * len(texts)
        drops.update(w for w in why if w)
        keep = [w is None for w in why]
        columns = {"lang": [c for (c, _), k in zip(found, keep) if k],
                   "lang_score": [s for (_, s), k in zip(found, keep) if k]}
        keys, texts = _survivors(keys, [t if k else None for t, k in zip(texts, keep)])

    if cfg.get("decontam"):
        dcfg = cfg["decontam"]
        hits = decontam.matches(texts, decontam.load(cfg["decontam_table"]), dcfg["ngram"])
        if dcfg["dry_run"]:
            for k, t, h in zip(keys, texts, hits):
                if h:
                    record(k, t, "decontam", decontam.REASON, h, "shared n-grams")
        else:
            drops[decontam.REASON] += sum(1 for h in hits if h)
            keep = [h == 0 for h in hits]
            columns = {c: [x for x, k in zip(v, keep) if k] for c, v in columns.items()}
            keys, texts = _survivors(keys, [t if k else None for t, k in zip(texts, keep)])

    records.sort(key=lambda r: r["key"])  # stable: a document's records keep the rules' order
    return {"texts": texts, "keys": keys, "columns": columns, "dropped": +drops, "lines_removed": +lines,
            "pii_redacted": +redacted, "languages": langs, "inspected": +inspected, "records": records}


def _survivors(keys: list[int], texts: list[str | None]) -> tuple[list[int], list[str]]:
    kept = [(k, t) for k, t in zip(keys, texts) if t is not None]
    return [k for k, _ in kept], [t for _, t in kept]


def records_jsonl(records: list[dict]) -> bytes:
    """Inspection rows as JSON Lines (keys sorted, so the bytes do not depend on the run)."""
    return "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def count_curation(job_name: str, unit_result: dict) -> None:
    """Prometheus counters for what curation changed without dropping: lines removed, PII redacted."""
    from rayworks import metrics

    for key, name, tag, what in (
            ("lines_removed", "rayworks_prep_lines_removed_total", "rule", "Lines removed by the C4 line rules, by rule."),
            ("pii_redacted", "rayworks_prep_pii_redacted_total", "kind", "PII matches replaced by a placeholder, by kind.")):
        for k, n in (unit_result.get(key) or {}).items():
            if n:
                metrics.counter(name, what, (tag,)).inc(n, tags=metrics.tags("prep", job_name, **{tag: k}))


def curation_counts(job, stats: list[dict], work: str) -> dict:
    """The manifest's curation counts (only for the stages the job turns on)."""
    from rayworks import storage

    out: dict = {}
    for key in EXTRA_COUNTS:
        total: Counter = Counter()
        for s in stats:
            total.update(s.get(key) or {})
        if key == "lines_removed" and job.quality and job.quality.c4 or key == "pii_redacted" and job.pii \
                or key == "languages" and job.language or key == "inspected" and total:
            out[key] = dict(sorted(total.items()))
    if job.decontam:
        out["decontam_eval"] = storage.read_json(storage.join(work, "decontam", "eval.json"))
    return out
