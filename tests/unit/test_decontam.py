"""Decontamination: normalised word n-grams of a local eval JSONL, matched against documents."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rayworks.data import curate, decontam
from rayworks.errors import ConfigError

EVAL = [{"q": "What colour did the lighthouse keeper paint the rowing boat on the first windy morning?",
         "a": "Sea green."},
        {"q": "Too short.", "a": "Yes."}]


@pytest.fixture
def table(tmp_path):
    p = tmp_path / "eval.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in EVAL) + "\n")
    arr, stats = decontam.eval_ngrams(str(p), ["q", "a"], 8)
    t = tmp_path / "ngrams.npy"
    t.write_bytes(decontam.to_npy(arr))
    return str(t), stats, arr


def test_eval_ngrams_are_counted_and_sorted(table):
    _, stats, arr = table
    n_words = len(decontam.words(EVAL[0]["q"] + " " + EVAL[0]["a"]))
    assert stats == {"eval_texts": 2, "eval_texts_shorter_than_n": 1, "eval_ngrams": n_words - 8 + 1}
    assert arr.dtype == np.uint64 and (np.diff(arr.astype(np.float64)) > 0).all()


def test_matches_ignore_case_punctuation_and_spacing(table):
    path, _, arr = table
    docs = ["Quiz: WHAT colour did the lighthouse-keeper   paint the rowing boat, I wonder?",
            "What colour did the lighthouse keeper choose for the rowing boat?",  # no 8 words in a row
            "short"]
    assert decontam.matches(docs, arr, 8) == [3, 0, 0]  # 11 shared words: three 8-grams
    assert decontam.matches(docs, np.empty(0, np.uint64), 8) == [0, 0, 0]


def test_ngram_hashes_are_stable_and_position_sensitive():
    a = decontam.ngram_hashes("one two three four".split(), 3)
    assert len(a) == 2 and a[0] != a[1]
    assert (a == decontam.ngram_hashes("one two three four".split(), 3)).all()
    assert decontam.ngram_hashes("three two one".split(), 3)[0] != decontam.ngram_hashes(
        "one two three".split(), 3)[0]


def test_curate_drops_or_reports(table):
    path, _, _ = table
    dirty = "Yesterday: what colour did the lighthouse keeper paint the rowing boat? Nobody knew."
    clean = "The lighthouse keeper painted his own front door a cheerful yellow last spring."
    cfg = {"decontam": {"path": "-", "text_fields": ["q"], "ngram": 8, "dry_run": False}, "decontam_table": path}
    r = curate.curate([clean, dirty], 1, cfg)
    assert r["texts"] == [clean] and dict(r["dropped"]) == {"decontam.ngram": 1}
    cfg["decontam"]["dry_run"] = True
    r = curate.curate([clean, dirty], 1, cfg)
    assert r["texts"] == [clean, dirty] and not r["dropped"]
    [rec] = r["records"]
    assert (rec["key"], rec["rule"], rec["value"], rec["stage"]) == ((1 << 32) | 1, "decontam.ngram", 3, "decontam")


def test_bad_eval_files_fail_with_a_message(tmp_path):
    p = tmp_path / "e.jsonl"
    with pytest.raises(ConfigError, match="is not a file"):
        decontam.eval_ngrams(str(p), ["text"], 8)
    p.write_text('{"text": "fine"}\n{not json\n')
    with pytest.raises(ConfigError, match=r"e.jsonl:2 is not valid JSON"):
        decontam.eval_ngrams(str(p), ["text"], 8)
    p.write_text('{"question": "no text field"}\n')
    with pytest.raises(ConfigError, match=r"no text field\(s\) \['text'\]; set decontam.text_fields"):
        decontam.eval_ngrams(str(p), ["text"], 8)
