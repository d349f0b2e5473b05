"""Prep's curation stages through the real job on the session cluster: one run, every stage.

Quality rules run as a dry run (nothing dropped; the inspection file in the output names
each planted document with its rule and measured value), language ID and decontamination
drop, PII is redacted; the manifest counts each. The drop-mode quality path and every
dashboard panel are the e2e pipeline's (tests/conftest.py plants the same documents).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qualitydocs import E2E_CURATION, EVAL_ROWS, PII_DOC, PLANTED

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def test_dry_run_inspection_file_and_curation_counts(ray_on_cluster, tmp_path):
    from rayworks.config.jobs import load_job_data
    from rayworks.data.corpus import build_python_docs
    from rayworks.data.job import run

    build_python_docs(tmp_path / "docs", size_mb=0.3)
    planted = tmp_path / "planted.jsonl"
    planted.write_text("".join(json.dumps({"text": t}) + "\n" for t in [*PLANTED.values(), PII_DOC]))
    ev = tmp_path / "eval.jsonl"
    ev.write_text("".join(json.dumps(r) + "\n" for r in EVAL_ROWS))
    out = tmp_path / "out"
    job = load_job_data({
        "kind": "prep", "name": "curation",
        "inputs": [{"path": f"{tmp_path}/docs/*.jsonl", "format": "jsonl"}, {"path": str(planted), "format": "jsonl"}],
        "output_uri": str(out), "clean": {"min_chars": 64},
        **E2E_CURATION, "quality": {**E2E_CURATION["quality"], "dry_run": True},
        "decontam": {**E2E_CURATION["decontam"], "path": str(ev), "text_fields": ["question", "answer"]},
        "tokenizer": {"vocab_size": 320, "sample_mb": 0.2}, "seq_len": 64, "val_fraction": 0.1, "unit_mb": 0.1,
        "execution": {"num_workers": 2}, "tracking": False,
    }, "test", REPO)
    m = run(job)
    c = m["counts"]

    # Dry run: no quality drop; each planted quality document is in the inspection file under its rule.
    assert not [k for k in c["dropped"] if k.startswith("quality.")], c["dropped"]
    rows = [json.loads(x) for x in (out / "inspection.jsonl").read_text().splitlines()]
    assert rows and [r["key"] for r in rows] == sorted(r["key"] for r in rows)
    assert all(set(r) == {"key", "stage", "rule", "value", "detail", "text"} for r in rows)
    by_text = {}
    for r in rows:
        by_text.setdefault(r["text"], set()).add(r["rule"])
    for reason, text in PLANTED.items():
        if reason.startswith("quality."):
            assert reason in by_text.get(text[:200], set()), (reason, by_text.get(text[:200]))
    assert {r["rule"] for r in rows} >= {"c4.javascript", "c4.lorem_ipsum", "c4.policy"}
    assert c["inspected"] == {k: sum(r["rule"] == k for r in rows) for k in c["inspected"]}
    assert "inspection.jsonl" in {f["path"] for f in m["outputs"]}  # hashed like every output

    # Language ID and decontamination dropped; PII was redacted; the eval set is an input.
    assert c["dropped"]["decontam.ngram"] == 1 and c["dropped"]["lang.other"] >= 1, c["dropped"]
    assert set(c["pii_redacted"]) == {"pii.email", "pii.ipv4", "pii.ipv6", "pii.phone"}
    assert c["languages"]["en"] > 50 and c["languages"]["de"] == 1
    assert c["decontam_eval"] == {"eval_texts": 2, "eval_texts_shorter_than_n": 0, "eval_ngrams": 18}
    assert [i["role"] for i in m["inputs"]].count("decontam") == 1

    # The document index carries each kept document's language and score into the output.
    from rayworks.data.manifest import document_index

    for split in ("train", "val"):
        idx = document_index(str(out), split).to_pydict()
        assert len(idx["key"]) == m["splits"][split]["documents"] and len(set(idx["key"])) == len(idx["key"])
        assert set(idx["lang"]) == {"en"} and min(idx["lang_score"]) >= 0.7, split
    assert sum(document_index(str(out), s).column("tokens").to_numpy().sum() for s in ("train", "val")) == c["tokens"]
