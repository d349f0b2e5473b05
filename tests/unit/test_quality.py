"""Quality rules: golden documents each Gopher and C4 rule keeps and drops, the dry run's
inspection records, curation inside clean_unit (keys, columns, determinism), and the
dashboard's one panel per drop reason."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from qualitydocs import E2E_CURATION, PII_DOC, PLANTED
from rayworks.config.quality import C4Rules, GopherRules, QualityConfig
from rayworks.data import curate, decontam, langid
from rayworks.data.clean import clean_unit, inspect_path, unit_key
from rayworks.data.quality import C4_LINE_RULES, REASONS, apply_quality, c4_verdict, gopher_findings

PAPER = GopherRules().model_dump()  # the Gopher paper's thresholds

GOOD = (
    "The old harbour town wakes up slowly on winter mornings, and the fishermen have already left.\n"
    "Bakers open their doors to the smell of fresh bread, while children walk to school with their friends.\n"
    "At noon the market fills with traders who sell cheese, apples and warm soup to the visitors.\n"
    "In the evening people gather near the lighthouse to watch the boats return with their catch.\n"
    "Nobody in the town would trade that quiet rhythm for the noise of a large city."
)


def _q(**over) -> dict:
    return {**QualityConfig(gopher={}).model_dump(), **over}


def _rules(text: str, cfg: dict = PAPER, first: bool = True) -> list[str]:
    return [f.rule for f in gopher_findings(text, cfg, stop_first=first)]


def test_a_good_document_passes_every_paper_rule():
    assert len(GOOD.split()) >= 50
    assert _rules(GOOD, first=False) == []


@pytest.mark.parametrize("rule, text", [
    ("quality.word_count", "A short note with only a handful of words that the rules drop."),
    ("quality.word_count", GOOD + (" filler" * 100_000)),
    ("quality.mean_word_length", GOOD.replace(" ", " a b ")),
    ("quality.mean_word_length", " ".join(["the", "and", "of"] + ["antidisestablishmentarianism"] * 60)),
    ("quality.symbol_ratio", GOOD + " " + " ".join(f"#tag{i}" for i in range(12))),
    ("quality.ellipsis_lines", GOOD.replace(".\n", "...\n")),
    ("quality.bullet_lines", "\n".join("- " + ln for ln in GOOD.split("\n"))),
    ("quality.alpha_words", GOOD + " " + " ".join(str(1000 + 7 * i) for i in range(40))),
    ("quality.stop_words", " ".join(f"word{i}x" for i in range(60))),
    ("quality.duplicate_lines", GOOD + "\n" + "\n".join(["Same line here again and again."] * 4)),
    ("quality.duplicate_paragraphs", GOOD + "\n\nRead more on our blog.\n\nRead more on our blog."),
    ("quality.top_ngram", GOOD.replace("\n", " ") + " " + "fresh bread " * 40),
    ("quality.duplicate_ngram", (GOOD.replace("\n", " ") + " ") * 2),
])
def test_each_paper_rule_drops_its_golden_document(rule, text):
    assert _rules(text)[:1] == [rule]


def test_rules_turned_off_do_not_apply_and_values_are_measured():
    short = "A short note with only a handful of words that the rules drop."
    assert _rules(short, {**PAPER, "min_words": None}) != ["quality.word_count"]
    [f] = gopher_findings(short, PAPER, stop_first=True)
    assert (f.rule, f.value) == ("quality.word_count", 13)
    doubled = (GOOD.replace("\n", " ") + " ") * 2
    assert _rules(doubled, {**PAPER, "max_duplicate_ngram_ratio": {}, "max_top_ngram_ratio": {}}) == []
    f = gopher_findings(doubled, PAPER, stop_first=True)[0]
    assert f.detail == "n=5" and f.value == pytest.approx(1.0)  # every word sits in a repeated 5-gram


def test_c4_removes_lines_by_rule_and_drops_documents_left_too_short():
    cfg = C4Rules().model_dump()
    text = ("Our shop is open every day of the week.\nPlease enable JavaScript to continue.\n"
            "Lorem ipsum dolor sit amet.\nRead our privacy policy now.\nMenu\nHome and garden items\n"
            "We deliver fresh flowers to your door.\nThe team answers every letter we get.")
    v = c4_verdict(text, cfg, dry_run=False)
    assert sorted(r for r, _ in v.removed_lines) == sorted(
        ["c4.javascript", "c4.lorem_ipsum", "c4.policy", "c4.no_terminal_punct", "c4.no_terminal_punct"])
    assert v.text.split("\n") == ["Our shop is open every day of the week.", "We deliver fresh flowers to your door.",
                                  "The team answers every letter we get."]
    assert v.failures == []
    assert c4_verdict("Hi there.\n" + text, cfg, dry_run=False).removed_lines[0] == ("c4.short_line", "Hi there.")
    few = c4_verdict("One good line is here.\nMenu\nHome", cfg, dry_run=False)
    assert [(f.rule, f.value) for f in few.failures] == [("quality.c4_too_few_lines", 1)]
    braces = c4_verdict("def f(): return {'a': 1}", {**cfg, "max_curly_braces": 0}, dry_run=False)
    assert [(f.rule, f.value) for f in braces.failures] == [("quality.c4_curly_braces", 1)]
    dry = c4_verdict(text, cfg, dry_run=True)
    assert dry.text == text and len(dry.removed_lines) == 5  # a dry run reports, never edits


def test_apply_quality_counts_drops_and_removed_lines():
    cfg = QualityConfig(gopher={}, c4={}).model_dump()
    noisy = GOOD + "\nPlease enable JavaScript to continue."
    out, drops, lines, flagged = apply_quality([noisy, "Too short to keep, surely."], cfg)
    assert out[0] == GOOD and out[1] is None
    assert dict(drops) == {"quality.c4_too_few_lines": 1}
    # The second keeps its one line (a sentence) but C4 wants at least min_lines (3) of them.
    assert dict(lines) == {"c4.javascript": 1} and set(lines) <= set(C4_LINE_RULES)
    assert [i for i, _ in flagged] == [0, 1]


def test_dry_run_drops_nothing_and_records_every_failing_rule():
    bad = " ".join(f"word{i}x" for i in range(20))  # too few words, and no stop word
    cfg = {"quality": _q(dry_run=True)}
    r = curate.curate([GOOD, bad], 7, cfg)
    assert r["texts"] == [GOOD, bad] and r["keys"] == [unit_key(7, 0), unit_key(7, 1)] and not r["dropped"]
    rules = [(x["key"], x["rule"], x["value"]) for x in r["records"]]
    assert rules == [(unit_key(7, 1), "quality.word_count", 20), (unit_key(7, 1), "quality.stop_words", 0)]
    assert r["records"][0]["text"] == bad[:200] and r["records"][0]["stage"] == "quality"
    assert r["inspected"] == {"quality.word_count": 1, "quality.stop_words": 1}
    line = curate.records_jsonl(r["records"]).decode().splitlines()[0]
    assert json.loads(line) == {"key": unit_key(7, 1), "stage": "quality", "rule": "quality.word_count",
                                "value": 20, "detail": "", "text": bad}


def test_dry_run_sample_is_a_deterministic_share_of_documents():
    docs = [" ".join(f"w{i}x{j}" for j in range(10)) for i in range(200)]  # every one fails word_count
    cfg = {"quality": _q(dry_run=True, inspect_fraction=0.25)}
    a = curate.curate(docs, 0, cfg)["records"]
    assert a == curate.curate(docs, 0, cfg)["records"]
    picked = {x["key"] for x in a}
    assert 20 < len(picked) < 80


def test_planted_documents_hit_exactly_their_reason(tmp_path):
    """tests/qualitydocs.py feeds the e2e run: each planted document must reach its own panel."""
    from rayworks.config.prep import PrepJob

    ev = tmp_path / "eval.jsonl"
    from qualitydocs import EVAL_ROWS

    ev.write_text("".join(json.dumps(r) + "\n" for r in EVAL_ROWS))
    job = PrepJob(kind="prep", name="x", inputs=[{"path": "x"}],
                  **{**E2E_CURATION, "decontam": {**E2E_CURATION["decontam"], "path": str(ev),
                                                  "text_fields": ["question", "answer"]}})
    cfg = {k: getattr(job, k).model_dump() for k in curate.CURATION}
    arr, _ = decontam.eval_ngrams(str(ev), ["question", "answer"], job.decontam.ngram)
    (tmp_path / "t.npy").write_bytes(decontam.to_npy(arr))
    cfg["decontam_table"] = str(tmp_path / "t.npy")
    for reason, text in PLANTED.items():
        assert dict(curate.curate([text], 0, cfg)["dropped"]) == {reason: 1}, reason
    kept = curate.curate([PII_DOC], 0, cfg)
    assert kept["texts"] and set(kept["pii_redacted"]) == {"pii.email", "pii.ipv4", "pii.ipv6", "pii.phone"}


def test_the_e2e_corpus_passes_the_e2e_quality_thresholds():
    """The e2e run's counts other than the planted drops stay those of a run without curation."""
    from rayworks.data.clean import clean_texts
    from rayworks.data.corpus import documents

    texts, _ = clean_texts([d["text"] for d in documents(1.5)], min_chars=64)  # conftest's corpus
    cfg = {"quality": QualityConfig(**E2E_CURATION["quality"]).model_dump()}
    assert not curate.curate(texts, 0, cfg)["dropped"]


def _unit(tmp_path: Path, docs: list[str]) -> tuple[dict, list[dict]]:
    p = tmp_path / "in.jsonl"
    p.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    files = [{"path": str(p), "size_bytes": p.stat().st_size, "format": "jsonl", "text_mode": "file",
              "text_field": "text"}]
    return {"unit": 2, "parts": [{"file": 0, "start": 0, "end": None}]}, files


def test_clean_unit_curates_before_hashing_and_is_deterministic(tmp_path):
    german = "Die Kinder spielen heute im Garten, und der Hund läuft mit dem Ball über die Wiese."
    unit, files = _unit(tmp_path, [GOOD, "Mail me at a.b@example.com please, " + GOOD, "short one, dropped.", german])
    base = {"normalize": "NFC", "strip_control": True, "min_chars": 3, "max_chars": 100_000,
            "on_decode_error": "replace"}
    # Stop words are English-only: off here, so the German document reaches language ID.
    gopher = {**PAPER, "min_words": 5, "min_stop_words": None}
    cfg = {**base, "pii": {"email": True, "ip": True, "phone": True}, "quality": _q(gopher=gopher),
           "language": {"languages": ["en", "de"], "keep": ["en"], "min_confidence": 0.5, "low_accuracy": False,
                        "max_chars": 2000, "dry_run": True}, "decontam": None}
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name / "u-00002.parquet"
        r = clean_unit(unit, files, cfg, [], str(out))
        runs.append((out.read_bytes(), Path(inspect_path(str(out))).read_bytes(), r))
    assert runs[0][:2] == runs[1][:2]  # same bytes: curation is a pure function of the unit
    r = runs[0][2]
    t = pq.read_table(tmp_path / "a" / "u-00002.parquet")
    assert t.column_names == ["key", "hash", "text", "lang", "lang_score"]
    # The short document drops (word count); keys keep their post-cleaning positions (gap at 2).
    assert t.column("key").to_pylist() == [unit_key(2, 0), unit_key(2, 1), unit_key(2, 3)]
    assert "<EMAIL>" in t.column("text")[1].as_py() and r["pii_redacted"] == {"pii.email": 1}
    assert t.column("lang").to_pylist() == ["en", "en", "de"]  # a language dry run keeps the German one
    assert r["dropped"] == {"quality.word_count": 1} and r["languages"] == {"de": 1, "en": 2}
    [rec] = [json.loads(x) for x in runs[0][1].decode().splitlines()]
    assert (rec["key"], rec["rule"], rec["detail"]) == (unit_key(2, 3), "lang.other", "language=de")


def test_every_drop_reason_has_its_own_dashboard_panel():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "dashboards"))
    from panels import CURATION_REASONS, PREP

    reasons = set(REASONS) | set(langid.REASONS) | {decontam.REASON}
    assert [r for r, _ in CURATION_REASONS] and {r for r, _ in CURATION_REASONS} == reasons
    titles = {p.title for row in PREP.rows for p in row.panels}
    assert all(f"Dropped: {r}" in titles for r in reasons)
    assert set(PLANTED) == reasons  # and the e2e run plants a document for each
