"""Deterministic, skippable training batches through Ray Data.

Why not Ray Train's default ``streaming_split``: it hands blocks to whichever worker
asks first, so which rows a worker sees depends on timing, and after a restart there
is no way to say "continue exactly after step s". Here the data order is a pure
function of (seed, epoch, step): global batch ``s`` is the sequences at global
positions ``[s*G, (s+1)*G)`` of an endless stream of epochs, each epoch a fresh
two-level shuffle (shard order, then rows within a shard, so a read touches one or
two shards at a time). Rank ``r`` trains the contiguous slice ``[r*L, (r+1)*L)`` of
each global batch (``L = micro batch x grad accumulation``).

Each rank gets its own unsplit dataset (``train_<rank>``): ``ray.data.range`` over
the rank's slots from a start step, mapped to (step, position) and then to the rows
read from the Parquet shards. Rows carry their step, so a worker that resumes from a
checkpoint skips the (at most one checkpoint interval of) rows before it and checks
that every micro batch belongs to the step it is training. The dataset factory runs
each time Ray Train (re)starts the worker group, and starts at the last checkpoint
the previous attempt reported (``progress.json``), so a restart reads nothing twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from rayworks import storage

PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class SplitIndex:
    """Shards of one split and their row counts (picklable, no Ray)."""

    shards: tuple[str, ...]
    rows: tuple[int, ...]
    seq_len: int

    @property
    def num_rows(self) -> int:
        return sum(self.rows)


def _perm(n: int, *key: int) -> np.ndarray:
    return np.random.default_rng(list(key)).permutation(n)


@lru_cache(maxsize=8)
def _epoch_layout(index: SplitIndex, seed: int, epoch: int, shuffle: bool):
    """(shard order, start offset of each shard in epoch order)."""
    order = _perm(len(index.shards), seed, epoch) if shuffle else np.arange(len(index.shards))
    rows = np.asarray(index.rows)[order]
    return order, np.concatenate([[0], np.cumsum(rows)[:-1]])


@lru_cache(maxsize=4)
def _row_perm(rows: int, seed: int, epoch: int, shard: int) -> np.ndarray:
    return _perm(rows, seed, epoch, shard, 1)


def locate(index: SplitIndex, positions: np.ndarray, seed: int, shuffle: bool) -> tuple[np.ndarray, np.ndarray]:
    """Maps global stream positions to (shard index, row within shard)."""
    n = index.num_rows
    epochs, within = np.divmod(positions, n)
    shard_out = np.empty_like(positions)
    row_out = np.empty_like(positions)
    for e in np.unique(epochs):
        sel = epochs == e
        order, starts = _epoch_layout(index, seed, int(e), shuffle)
        k = np.searchsorted(starts, within[sel], side="right") - 1
        shard = order[k]
        local = within[sel] - starts[k]
        if shuffle:
            local = np.array([_row_perm(index.rows[s], seed, int(e), int(s))[i] for s, i in zip(shard, local)],
                             dtype=positions.dtype) if len(local) else local
        shard_out[sel], row_out[sel] = shard, local
    return shard_out, row_out


_TABLES: dict[str, np.ndarray] = {}


def _shard_array(uri: str, seq_len: int) -> np.ndarray:
    """A shard's input_ids as an int32 [rows, seq_len] array; the two most recent stay cached."""
    arr = _TABLES.get(uri)
    if arr is None:
        import pyarrow.parquet as pq

        fs, path = storage.filesystem(uri)
        col = pq.read_table(path, filesystem=fs, columns=["input_ids"]).column("input_ids").combine_chunks()
        arr = col.flatten().to_numpy(zero_copy_only=False).astype(np.int32, copy=False).reshape(-1, seq_len)
        while len(_TABLES) >= 2:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[uri] = arr
    return arr


def fetch(index: SplitIndex, positions: np.ndarray, seed: int, shuffle: bool) -> np.ndarray:
    """The token rows at global stream positions, in order."""
    shard, row = locate(index, positions, seed, shuffle)
    out = np.empty((len(positions), index.seq_len), dtype=np.int32)
    for s in np.unique(shard):
        sel = shard == s
        out[sel] = _shard_array(index.shards[s], index.seq_len)[row[sel]]
    return out


@dataclass(frozen=True)
class TrainPlan:
    """Which rows each rank trains at each step; builds the per-rank Ray datasets."""

    index: SplitIndex
    num_workers: int
    micro_batch: int
    grad_accum: int
    num_steps: int
    seed: int
    shuffle: bool
    output_uri: str
    checkpoint_every: int

    @property
    def rows_per_rank_step(self) -> int:
        return self.micro_batch * self.grad_accum

    @property
    def global_batch(self) -> int:
        return self.rows_per_rank_step * self.num_workers

    def positions(self, rank: int, steps: np.ndarray) -> np.ndarray:
        """Global positions of rank's rows for the given (1-based) steps, flattened in training order."""
        L = self.rows_per_rank_step
        base = (steps.astype(np.int64) - 1) * self.global_batch + rank * L
        return (base[:, None] + np.arange(L)[None, :]).reshape(-1)

    def start_step(self) -> int:
        """First step of the datasets: the step after the last checkpoint an earlier attempt reported.

        One checkpoint interval of margin covers a checkpoint whose report never
        reached the controller; the worker skips those rows by their step column.
        """
        path = storage.join(self.output_uri, PROGRESS_FILE)
        if not storage.exists(path):
            return 1
        step = int(storage.read_json(path).get("checkpoint_step", 0))
        return max(1, step - self.checkpoint_every + 1)

    def rank_dataset(self, rank: int):
        """The Ray dataset of rank's rows from start_step() on: columns step, pos, input_ids."""
        import ray.data

        first = self.start_step()
        L = self.rows_per_rank_step
        n = max(0, (self.num_steps - first + 1) * L)
        plan = self
        # Blocks of whole steps, a few MB each, so reads pipeline with training.
        steps_per_block = max(1, (4 << 20) // max(1, L * self.index.seq_len * 4))
        num_blocks = max(1, min(256, -(-n // (steps_per_block * L)))) if n else 1

        def rows(batch: dict) -> dict:
            i = batch["id"].astype(np.int64)
            steps = first + i // L
            pos = plan.positions(rank, np.unique(steps))
            # positions() lists whole steps; pick this batch's slots out of them.
            k = (steps - steps.min()) * L + i % L
            pos = pos[k]
            return {"step": steps, "pos": pos, "input_ids": fetch(plan.index, pos, plan.seed, plan.shuffle)}

        return ray.data.range(n, override_num_blocks=num_blocks).map_batches(rows, batch_size=None,
                                                                             batch_format="numpy")


def val_dataset(index: SplitIndex, rank: int, num_workers: int, max_rows: int | None):
    """Rank's contiguous slice of the first max_rows validation rows (same rows every evaluation)."""
    import ray.data

    n = index.num_rows if max_rows is None else min(max_rows, index.num_rows)
    per = n // num_workers
    lo = rank * per

    def rows(batch: dict) -> dict:
        pos = batch["id"].astype(np.int64) + lo
        return {"pos": pos, "input_ids": fetch(index, pos, 0, False)}

    return ray.data.range(per, override_num_blocks=1).map_batches(rows, batch_size=None, batch_format="numpy")
