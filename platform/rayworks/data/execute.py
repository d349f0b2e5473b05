"""Runs a stage's work units with Ray Data, and reports progress and metrics.

A stage is a plain function over one unit (it reads its inputs and writes its own
output and completion marker); Ray Data schedules the units as a streaming, parallel
``map`` with bounded concurrency and shows its progress bar, while the driver turns
each finished unit into a progress line and Prometheus metrics. Results travel as
JSON strings so rows of any shape fit one Arrow schema.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Iterator

from rayworks import metrics

AREA_TAGS = ("stage",)


def _call(row: dict, fn: Callable, kwargs: dict) -> dict:
    result = fn(**json.loads(row["arg"]), **kwargs)
    return {"result": json.dumps(result)}


def run_units(fn: Callable, items: list[dict], num_workers: int, num_cpus: float,
              **kwargs: Any) -> Iterator[dict]:
    """Yields ``fn(**item, **kwargs)`` for every item as units finish (any order)."""
    if not items:
        return
    import ray.data

    ds = ray.data.from_items([{"arg": json.dumps(it)} for it in items], override_num_blocks=len(items))
    pool = ray.data.TaskPoolStrategy(size=max(1, min(num_workers, len(items))))
    ds = ds.map(_call, fn_kwargs={"fn": fn, "kwargs": kwargs}, compute=pool, num_cpus=num_cpus)
    for row in ds.iter_rows():
        yield json.loads(row["result"])


class Progress:
    """Progress lines and metrics for one stage of one run."""

    def __init__(self, job_name: str, stage: str, total: int, done_before: int = 0):
        self.stage, self.total, self.done = stage, total, done_before
        self.t0 = time.time()
        self.tags = metrics.tags("prep", job_name, stage=stage)
        self.job_name = job_name
        self.docs = self.bytes = self.tokens = 0
        self._last_print = 0.0
        if done_before:
            print(f"[prep] {stage}: {done_before}/{total} units already done (resuming)", flush=True)

    def unit_done(self, docs: int = 0, nbytes: int = 0, tokens: int = 0) -> None:
        """Counts one finished unit with the documents, bytes and tokens it processed."""
        self.done += 1
        self.docs += docs
        self.bytes += nbytes
        self.tokens += tokens
        dt = max(time.time() - self.t0, 1e-6)
        m = _metrics()
        m["units"].inc(1, tags=self.tags)
        m["progress"].set(self.done / max(self.total, 1), tags=self.tags)
        if docs:
            m["docs"].inc(docs, tags=self.tags)
            m["docs_rate"].set(self.docs / dt, tags=self.tags)
        if nbytes:
            m["bytes"].inc(nbytes, tags=metrics.tags("prep", self.job_name))
            m["bytes_rate"].set(self.bytes / dt, tags=self.tags)
        if tokens:
            m["tokens_rate"].set(self.tokens / dt, tags=self.tags)
        now = time.time()
        if now - self._last_print > 2.0 or self.done == self.total:
            self._last_print = now
            parts = [f"[prep] {self.stage}: {self.done}/{self.total} units"]
            if docs or self.docs:
                parts.append(f"{self.docs:,} docs ({self.docs / dt:,.0f}/s)")
            if self.bytes:
                parts.append(f"{self.bytes / 1e6:,.1f} MB ({self.bytes / 1e6 / dt:,.1f} MB/s)")
            if self.tokens:
                parts.append(f"{self.tokens:,} tokens ({self.tokens / dt:,.0f}/s)")
            print(" | ".join(parts), flush=True, file=sys.stdout)


def count_drops(job_name: str, drops: dict[str, int]) -> None:
    for reason, n in drops.items():
        if n:
            _metrics()["dropped"].inc(n, tags=metrics.tags("prep", job_name, reason=reason))


def count_tokens(job_name: str, split: str, tokens: int, rows: int) -> None:
    m = _metrics()
    t = metrics.tags("prep", job_name, split=split)
    if tokens:
        m["tokens"].inc(tokens, tags=t)
    if rows:
        m["sequences"].inc(rows, tags=t)


def _metrics() -> dict:
    return {
        "units": metrics.counter("rayworks_prep_units_done_total", "Work units finished, by stage.", AREA_TAGS),
        "progress": metrics.gauge("rayworks_prep_progress_ratio", "Share of a stage's units done (0-1).", AREA_TAGS),
        "docs": metrics.counter("rayworks_prep_documents_total",
                                "Documents processed, by stage (clean: read from inputs; pack: tokenized).", AREA_TAGS),
        "docs_rate": metrics.gauge("rayworks_prep_documents_per_second", "Documents per second in a stage.", AREA_TAGS),
        "bytes": metrics.counter("rayworks_prep_bytes_read_total", "Input bytes read."),
        "bytes_rate": metrics.gauge("rayworks_prep_bytes_per_second", "Input bytes read per second.", AREA_TAGS),
        "tokens": metrics.counter("rayworks_prep_tokens_total", "Tokens written (EOS included), by split.", ("split",)),
        "tokens_rate": metrics.gauge("rayworks_prep_tokens_per_second", "Tokens per second while packing.", AREA_TAGS),
        "sequences": metrics.counter("rayworks_prep_sequences_total", "Packed rows written, by split.", ("split",)),
        "dropped": metrics.counter("rayworks_prep_documents_dropped_total",
                                   "Documents dropped, by reason (cleaning reasons and duplicate).", ("reason",)),
    }
