"""Benchmark: rayworks prep vs the tokenizer ceiling vs Hugging Face `datasets`, side by side.

    python tests/bench/bench_prep.py                 # 100 MB demo corpus (built from Python's own text)
    python tests/bench/bench_prep.py --size-mb 1000  # the 1 GB memory check

All three tokenize the same corpus with the same tokenizer (a byte-level BPE trained
once here) and report tokens/s over wall time:

1. ceiling: ``tokenizers`` ``encode_batch`` over the documents already in memory, one
   process, all cores (TOKENIZERS_PARALLELISM=true), no I/O;
2. datasets: ``load_dataset("json")``, ``map(batched=True, num_proc=cores)`` to clean
   and ``filter`` by length, ``map`` to tokenize, ``map`` to pack to ``seq_len`` with
   EOS between documents, ``to_parquet``;
3. rayworks: the prep job end to end (read, clean, dedup, tokenize, pack, write) on a
   local Ray instance with one worker per core.

Peak memory is the largest sum of proportional set sizes (PSS) of this process and
all its children (Ray's workers included) seen during each run; the line under it says
when the peak came and what each process title (``ray::Map(_call)``, ``raylet``, ...)
held then. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import unicodedata
from pathlib import Path

from procs import install

CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
MIN_CHARS, MAX_CHARS = 64, 200_000


class PeakMemory:
    """Samples the PSS (RSS where PSS is unavailable) of this process tree in a thread.

    ``at_peak`` keeps what each process held at the peak (its title, e.g. ``raylet`` or
    ``ray::_call``, and bytes), so a report can say where the memory went.
    """

    def __init__(self, interval_s: float = 0.5):
        self.interval_s, self.peak, self._stop = interval_s, 0, threading.Event()
        self.at_peak: list[tuple[str, int]] = []
        self.peak_at_s = 0.0

    def _sample(self) -> tuple[int, list[tuple[str, int]]]:
        import psutil

        me = psutil.Process()
        procs = []
        for p in [me] + me.children(recursive=True):
            try:
                mi = p.memory_full_info()
                title = "bench" if p.pid == me.pid else ((p.cmdline() or [""])[0].split() or [p.name()])[0]
                procs.append((os.path.basename(title), getattr(mi, "pss", mi.rss)))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return sum(b for _, b in procs), procs

    def breakdown(self) -> str:
        """``title xN: MiB`` per process title at the peak, largest first."""
        by: dict[str, list[int]] = {}
        for title, b in self.at_peak:
            by.setdefault(title, []).append(b)
        rows = sorted(by.items(), key=lambda kv: -sum(kv[1]))
        return f"{self.peak_at_s:.0f} s in: " + ", ".join(f"{t} x{len(bs)}: {sum(bs) / 2**20:,.0f} MiB"
                                                     for t, bs in rows)

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        t0 = time.time()
        while not self._stop.is_set():
            total, procs = self._sample()
            if total > self.peak:
                self.peak, self.at_peak, self.peak_at_s = total, procs, time.time() - t0
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def _clean_batch(batch):
    out = []
    for s in batch["text"]:
        s = unicodedata.normalize("NFC", s or "").replace("\r\n", "\n").replace("\r", "\n")
        out.append(CONTROL.sub("", s).strip())
    return {"text": out}


def _keep(batch):
    return [MIN_CHARS <= len(s) <= MAX_CHARS for s in batch["text"]]


def run_datasets(corpus: Path, tok_dir: Path, out: Path, seq_len: int, cores: int) -> int:
    """The usual `datasets` pipeline; returns tokens written."""
    import datasets
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tok_dir), local_files_only=True)
    eos = tok.eos_token_id

    def tokenize(batch):
        return {"input_ids": [ids + [eos] for ids in tok(batch["text"], add_special_tokens=False)["input_ids"]]}

    def pack(batch):
        flat = [t for ids in batch["input_ids"] for t in ids]
        n = len(flat) // seq_len * seq_len
        return {"input_ids": [flat[i:i + seq_len] for i in range(0, n, seq_len)]}

    ds = datasets.load_dataset("json", data_files=sorted(glob.glob(f"{corpus}/*.jsonl")), split="train",
                               cache_dir=str(out / "hf-cache"))
    ds = ds.map(_clean_batch, batched=True, num_proc=cores)
    ds = ds.filter(_keep, batched=True, num_proc=cores)
    ds = ds.map(tokenize, batched=True, num_proc=cores, remove_columns=ds.column_names)
    ds = ds.map(pack, batched=True, batch_size=1000, num_proc=cores)
    ds.to_parquet(str(out / "train.parquet"))
    return len(ds) * seq_len


def run_ceiling(texts: list[str], tok_dir: Path) -> int:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    n = 0
    for i in range(0, len(texts), 2000):  # chunks keep the Encoding objects from filling memory
        n += sum(len(e.ids) + 1 for e in tok.encode_batch(texts[i:i + 2000], add_special_tokens=False))
    return n


def run_rayworks(corpus: Path, tok_dir: Path, out: Path, seq_len: int, cores: int) -> int:
    import ray

    from rayworks.config.jobs import load_job_data
    from rayworks.data.job import run

    job = load_job_data({
        "kind": "prep", "name": "bench", "output_uri": str(out),
        "inputs": [{"path": f"{corpus}/*.jsonl", "format": "jsonl"}],
        "clean": {"min_chars": MIN_CHARS, "max_chars": MAX_CHARS}, "tokenizer": {"path": str(tok_dir)},
        "seq_len": seq_len, "val_fraction": 0.0, "unit_mb": 8, "execution": {"num_workers": cores},
    }, "bench", Path.cwd())
    m = run(job)
    return m["counts"]["sequences"] * seq_len


def documents(corpus: Path):
    """The corpus's document texts, in file order, read lazily."""
    return (json.loads(ln)["text"] for p in sorted(corpus.glob("*.jsonl")) for ln in p.open())


def make_inputs(corpus: str, size_mb: float, tok_dir: str, vocab_size: int) -> None:
    """The bench's corpus (Python's own text) and tokenizer (a byte-level BPE on every 7th
    document, up to 16 MB of text), each unless already there."""
    from rayworks.data.corpus import build_python_docs
    from rayworks.data.tokenizer import save_tokenizer, train_tokenizer

    if not (Path(corpus) / "summary.json").is_file():
        summary = build_python_docs(Path(corpus), size_mb=size_mb, shard_mb=16)
        (Path(corpus) / "summary.json").write_text(json.dumps(summary))
    if (Path(tok_dir) / "tokenizer.json").is_file():
        return

    cfg = {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "extra_special_tokens": [],
           "vocab_size": vocab_size, "min_frequency": 2}
    sample, size = [], 0
    for i, text in enumerate(documents(Path(corpus))):
        if i % 7 == 0:
            sample.append(text)
            size += len(text)
            if size > 16e6:
                break
    save_tokenizer(train_tokenizer(sample, cfg), tok_dir)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=100.0, help="corpus size (default 100)")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--workdir", default=None, help="keep the corpus and outputs here (default: a temp dir)")
    ap.add_argument("--only", nargs="+", choices=["ceiling", "datasets", "rayworks"], default=None,
                    help="run only these (e.g. `--size-mb 1000 --only rayworks` for the memory check: the "
                         "corpus is then never loaded into this process, so peak memory is rayworks' own)")
    args = ap.parse_args(argv)
    install()
    runs = args.only or ["ceiling", "datasets", "rayworks"]
    os.environ.update({"TOKENIZERS_PARALLELISM": "true", "RAY_USAGE_STATS_ENABLED": "0",
                       "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rayworks-bench-prep-"))
    work.mkdir(parents=True, exist_ok=True)

    corpus = work / f"corpus-{args.size_mb:g}mb"
    tok_dir = work / f"tokenizer-{args.vocab_size}"
    if not (corpus / "summary.json").is_file() or not (tok_dir / "tokenizer.json").is_file():
        # In a child process: what building the corpus and training a BPE on 16 MB leave in this
        # process's heap would otherwise count in the peak memory of the runs below (the prep
        # job's driver is this process).
        import multiprocessing as mp

        child = mp.get_context("spawn").Process(target=make_inputs,
                                                args=(str(corpus), args.size_mb, str(tok_dir), args.vocab_size))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError(f"building the bench corpus or tokenizer failed (exit {child.exitcode})")
    summary = json.loads((corpus / "summary.json").read_text())
    texts = list(documents(corpus)) if "ceiling" in runs else None
    print(f"corpus: {summary['documents']:,} documents, {summary['text_mb']:,.1f} MB of text; "
          f"{args.cores} cores; seq_len {args.seq_len}; vocab {args.vocab_size}", flush=True)

    results = {}
    for name, fn in [
        ("ceiling", lambda: run_ceiling(texts, tok_dir)),
        ("datasets", lambda: run_datasets(corpus, tok_dir, work / "out-datasets", args.seq_len, args.cores)),
        ("rayworks", lambda: run_rayworks(corpus, tok_dir, work / "out-rayworks", args.seq_len, args.cores)),
    ]:
        if name not in runs:
            continue
        for d in ("out-datasets", "out-rayworks"):
            shutil.rmtree(work / d, ignore_errors=True)
        if name == "rayworks":
            import ray

            ray.init(num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
        with PeakMemory() as mem:
            t0 = time.time()
            tokens = fn()
            dt = time.time() - t0
        if name == "rayworks":
            import ray

            ray.shutdown()
        if name == "ceiling":
            texts = None  # the other two read the corpus themselves; don't count this copy against them
        results[name] = {"tokens": tokens, "seconds": dt, "tokens_per_s": tokens / dt, "peak_mem_gb": mem.peak / 2**30}
        print(f"{name:>9}: {tokens:>12,} tokens in {dt:7.1f}s = {tokens / dt:>10,.0f} tokens/s; "
              f"peak memory {mem.peak / 2**30:.2f} GiB", flush=True)
        print(f"{'':>9}  at the peak: {mem.breakdown()}", flush=True)
    del texts
    r = results
    results["ratios"] = {f"rayworks/{b}": r["rayworks"]["tokens_per_s"] / r[b]["tokens_per_s"]
                         for b in ("ceiling", "datasets") if b in r and "rayworks" in r}
    for k, v in results["ratios"].items():
        print(f"{k}: {v:.2f}")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
