"""A prep output made directly, in exactly the prep job's format, so train tests need no prep job.

`make_prep_output(out_dir)` tokenizes real text (pydoc_data.topics) with the tiny BPE
tokenizer of tests/tinymodel.py, packs it into seq_len sequences separated by EOS, and
writes ``manifest.json``, ``tokenizer/`` and Parquet shards with one ``input_ids``
column of ``fixed_size_list<int32>[seq_len]``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_prep_output(out_dir: str | Path, seq_len: int = 64, vocab_size: int = 512, num_train_shards: int = 2,
                     max_train_sequences: int = 2000, num_val_sequences: int = 64) -> Path:
    """Writes a prep output directory and returns its path."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pydoc_data.topics as t

    from tests.tinymodel import make_tokenizer

    out = Path(out_dir)
    (out / "tokenizer").mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(out / "tokenizer", vocab_size)
    ids: list[int] = []
    for key in sorted(t.topics):
        ids.extend(tok(t.topics[key])["input_ids"])
        ids.append(tok.eos_token_id)
        if len(ids) >= (max_train_sequences + num_val_sequences) * seq_len:
            break
    rows = np.asarray(ids[: len(ids) // seq_len * seq_len], dtype=np.int32).reshape(-1, seq_len)
    val, train = rows[:num_val_sequences], rows[num_val_sequences:num_val_sequences + max_train_sequences]

    def write(split: str, arr, n_shards: int) -> dict:
        shards = []
        for i, part in enumerate(np.array_split(arr, n_shards)):
            name = f"{split}/part-{i:05d}.parquet"
            (out / split).mkdir(exist_ok=True)
            col = pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1), pa.int32()), seq_len)
            pq.write_table(pa.table({"input_ids": col}), out / name)
            shards.append({"name": name, "rows": int(len(part)), "sha256": _sha(out / name)})
        return {"shards": shards, "num_sequences": int(len(arr)), "num_tokens": int(arr.size)}

    tok_hash = hashlib.sha256()
    for f in sorted((out / "tokenizer").iterdir()):
        tok_hash.update(f.name.encode() + f.read_bytes())
    manifest = {
        "kind": "prep", "name": out.name, "config_hash": "fixture", "seq_len": seq_len,
        "tokenizer": {"dir": "tokenizer", "sha256": tok_hash.hexdigest(), "vocab_size": len(tok),
                      "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        "splits": {"train": write("train", train, num_train_shards), "val": write("val", val, 1)},
        "unigram_entropy_nats": float(_entropy(train)),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return out


def _entropy(arr) -> float:
    import numpy as np

    counts = np.bincount(arr.reshape(-1))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


if __name__ == "__main__":
    import sys

    print(make_prep_output(sys.argv[1]))
