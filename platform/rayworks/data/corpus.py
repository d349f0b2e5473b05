"""The demo corpus: real text that ships with every Python install, built at run time.

``pydoc_data.topics`` (the language reference's help topics) and the standard
library's own ``.py`` sources become JSON Lines documents ``{"text", "source"}``.
Nothing third-party is committed; the corpus is rebuilt on each machine.

``size_mb`` trims the corpus, or grows it past the base size (for the benchmark) by
repeating it with each document's paragraphs reshuffled per repeat, so repeats are
mostly new documents (single-paragraph ones stay exact duplicates for dedup to find).
"""

from __future__ import annotations

import json
import os
import random
import sysconfig
from pathlib import Path
from typing import Iterator

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def base_documents() -> Iterator[tuple[str, str]]:
    """(source, text) for every pydoc topic and every stdlib .py file, in a fixed order."""
    import pydoc_data.topics as topics

    for key in sorted(topics.topics):
        yield f"pydoc_data.topics:{key}", topics.topics[key]
    lib = Path(sysconfig.get_paths()["stdlib"])
    paths = []
    for d, dirs, fs in os.walk(lib):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS)
        paths += [Path(d, f) for f in fs if f.endswith(".py")]
    for p in sorted(paths):
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a handful of test files are deliberately not UTF-8
        yield f"stdlib:{p.relative_to(lib)}", text


def _vary(text: str, repeat: int, index: int) -> str:
    paras = text.split("\n\n")
    random.Random(f"{repeat}:{index}").shuffle(paras)
    return "\n\n".join(paras)


def documents(size_mb: float | None = None) -> Iterator[dict]:
    """Corpus documents up to about ``size_mb`` MB of UTF-8 text (None: the base corpus once)."""
    base = list(base_documents())
    limit = None if size_mb is None else int(size_mb * 1e6)
    total, repeat = 0, 0
    while True:
        for i, (src, text) in enumerate(base):
            if limit is not None and total >= limit:
                return
            if repeat:
                text, src = _vary(text, repeat, i), f"{src}#r{repeat}"
            total += len(text.encode("utf-8"))
            yield {"text": text, "source": src}
        repeat += 1
        if limit is None:
            return


def build_python_docs(out: str | Path, size_mb: float | None = None, shard_mb: float = 16.0) -> dict:
    """Writes the corpus as ``python-docs-NNNNN.jsonl`` shards into ``out``; returns a summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("python-docs-*.jsonl"):
        old.unlink()
    shard, n_docs, n_bytes, cur = 0, 0, 0, 0
    f = open(out / f"python-docs-{shard:05d}.jsonl", "w", encoding="utf-8")
    try:
        for doc in documents(size_mb):
            line = json.dumps(doc, ensure_ascii=False) + "\n"
            if cur and cur + len(line) > shard_mb * 1e6:
                f.close()
                shard, cur = shard + 1, 0
                f = open(out / f"python-docs-{shard:05d}.jsonl", "w", encoding="utf-8")
            f.write(line)
            cur += len(line.encode("utf-8"))
            n_docs += 1
            n_bytes += len(doc["text"].encode("utf-8"))
    finally:
        f.close()
    return {"out": str(out), "files": shard + 1, "documents": n_docs, "text_mb": n_bytes / 1e6}
