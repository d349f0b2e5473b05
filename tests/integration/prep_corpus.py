"""A small real corpus with every kind of input the prep job handles, plus an independent count.

Used by the prep integration tests: python-docs JSONL (real text from the standard
library), a text file read line by line with duplicates, control characters, CRLF and
invalid UTF-8, a Parquet file repeating some JSONL documents, and a corrupt JSONL file.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def build(root: Path, size_mb: float = 0.6) -> dict:
    """Writes the corpus under root; returns paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayworks.data.corpus import build_python_docs

    docs = root / "docs"
    build_python_docs(docs, size_mb=size_mb, shard_mb=0.15)
    lines = root / "lines"
    lines.mkdir(parents=True, exist_ok=True)
    body = [b"the quick brown fox", b"cafe\xcc\x81 au lait\r", b"bell\x07 and tab\tstay", b"",
            b"bad byte \xff here", b"the quick brown fox", b"x", b"   ", b"caf\xc3\xa9 au lait",
            b"z" * 5000] + [f"line number {i} of the line file".encode() for i in range(300)]
    (lines / "a.txt").write_bytes(b"\n".join(body) + b"\n")
    first = [json.loads(ln)["text"] for ln in (docs / "python-docs-00000.jsonl").read_text().splitlines()[:3]]
    pq.write_table(pa.table({"content": first + ["a parquet-only document", None]}), root / "extra.parquet")
    bad = root / "bad"
    bad.mkdir(exist_ok=True)
    (bad / "broken.jsonl").write_text('{"text": "fine line"}\n{"text": "truncated\n')
    return {"docs": docs, "lines": lines, "parquet": root / "extra.parquet", "bad": bad}


def job_dict(paths: dict, out: Path, **over) -> dict:
    d = {
        "kind": "prep", "name": "itest",
        "inputs": [
            {"path": f"{paths['docs']}/*.jsonl", "format": "jsonl"},
            {"path": str(paths["lines"]), "format": "text", "text_mode": "line"},
            {"path": str(paths["parquet"]), "format": "parquet", "text_field": "content"},
            {"path": f"{paths['bad']}/*.jsonl", "format": "jsonl"},
        ],
        "output_uri": str(out),
        "clean": {"min_chars": 3, "max_chars": 4000, "on_decode_error": "replace"},
        "tokenizer": {"vocab_size": 320, "sample_mb": 0.2},
        "seq_len": 64, "val_fraction": 0.1, "unit_mb": 0.12, "on_bad_file": "skip",
        "execution": {"num_workers": 2},
        # Byte-identical manifests are compared: no MLflow run id in them (and no run in a server on :5000).
        "tracking": False,
    }
    for k, v in over.items():
        d[k] = v
    return d


def clean(s: str, cfg: dict) -> tuple[str | None, str | None]:
    s = unicodedata.normalize("NFC", s)
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = CONTROL.sub("", s).strip()
    if not s:
        return None, "empty"
    if len(s) < cfg["min_chars"]:
        return None, "too_short"
    if len(s) > cfg["max_chars"]:
        return None, "too_long"
    return s, None


def reference_counts(paths: dict, cfg: dict, tokenizer_dir: Path) -> dict:
    """Counts computed here with plain Python, independently of the job's code."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    raw: list[str] = []
    for p in sorted(paths["docs"].glob("*.jsonl")):
        for ln in p.read_bytes().split(b"\n"):
            if ln.strip():
                raw.append(json.loads(ln.decode("utf-8", "replace"))["text"])
    for ln in (paths["lines"] / "a.txt").read_bytes().split(b"\n"):
        ln = ln[:-1] if ln.endswith(b"\r") else ln
        if ln.strip():
            raw.append(ln.decode("utf-8", "replace"))
    raw += [v or "" for v in pq.read_table(paths["parquet"]).column("content").to_pylist()]
    dropped, seen, kept = Counter(), set(), []
    for s in raw:
        c, why = clean(s, cfg)
        if why:
            dropped[why] += 1
        elif c in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(c)
            kept.append(c)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    tokens = sum(len(ids) + 1 for ids in tok(kept, add_special_tokens=False)["input_ids"])
    return {"documents_read": len(raw), "documents_kept": len(kept), "duplicates": dropped.pop("duplicate", 0),
            "dropped": dict(dropped), "tokens": tokens}
