"""`rayworks corpus ...`: build demo corpora from text that ships with Python."""

from __future__ import annotations


def cmd_corpus_python_docs(a) -> None:
    from rayworks.data.corpus import build_python_docs

    s = build_python_docs(a.out, size_mb=a.size_mb, shard_mb=a.shard_mb)
    print(f"wrote {s['documents']:,} documents ({s['text_mb']:,.1f} MB of text) in {s['files']} JSONL "
          f"file(s) to {s['out']}")
    print(f"  prep it: rayworks submit jobs/configs/prep.yaml --set 'inputs=[{{path: {s['out']}/*.jsonl, "
          "format: jsonl}]'")


def register(sub) -> None:
    """Adds `rayworks corpus python-docs OUT [--size-mb N]`."""
    p = sub.add_parser("corpus", help="build a demo corpus (no downloads)")
    csub = p.add_subparsers(dest="corpus", required=True, metavar="SOURCE")
    q = csub.add_parser("python-docs", help="pydoc_data.topics + the standard library's sources, as JSONL")
    q.add_argument("out", help="output folder")
    q.add_argument("--size-mb", type=float, default=None,
                   help="trim to, or grow to (repeats with paragraphs reshuffled), about this many MB of text")
    q.add_argument("--shard-mb", type=float, default=16.0, help="size of each JSONL file in MB (default 16)")
    q.set_defaults(func=cmd_corpus_python_docs)
