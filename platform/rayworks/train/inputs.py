"""The training job's input: a prep output directory, read through its manifest.

The contract (written by the prep job): ``manifest.json`` with ``kind: prep``,
``seq_len``, ``tokenizer`` ({dir, sha256, vocab_size, eos_token_id, pad_token_id}) and
``splits`` ({name: {shards: [{name, rows, sha256}], num_sequences, num_tokens}}); a
``tokenizer/`` directory; Parquet shards with one ``input_ids`` column of
``fixed_size_list<int32>[seq_len]``. Only the manifest is read here (no torch, no Ray).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rayworks.errors import ConfigError
from rayworks import storage

if TYPE_CHECKING:
    from rayworks.config.train import TrainJob


@dataclass
class Split:
    """One split: shard URIs and their row counts, in manifest order."""

    name: str
    shards: list[str]
    rows: list[int]

    @property
    def num_rows(self) -> int:
        return sum(self.rows)


@dataclass
class PrepInfo:
    """What training needs from a prep output."""

    uri: str
    manifest_path: str
    manifest_sha256: str
    seq_len: int
    vocab_size: int
    eos_token_id: int | None
    pad_token_id: int | None
    tokenizer_dir: str
    splits: dict[str, Split] = field(default_factory=dict)
    config_hash: str | None = None

    def split(self, name: str, field_name: str) -> Split:
        if name not in self.splits:
            raise ConfigError(f"{field_name}: split {name!r} is not in {self.manifest_path} "
                              f"(it has {sorted(self.splits)})")
        s = self.splits[name]
        if s.num_rows == 0:
            raise ConfigError(f"{field_name}: split {name!r} of {self.manifest_path} has no sequences; "
                              "give the prep job more text")
        return s


def read_prep(uri: str) -> PrepInfo:
    """Reads and checks a prep manifest.

    Raises:
        ConfigError: when the manifest is missing, not a prep manifest, or incomplete.
    """
    path = storage.join(uri, "manifest.json")
    if not storage.exists(path):
        raise ConfigError(f"data.prep_uri: no manifest.json at {path}; run the prep job first "
                          "(`rayworks submit jobs/configs/prep.yaml`) or fix the path")
    raw = storage.read_bytes(path)
    try:
        import json

        m = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if m.get("kind") != "prep":
        raise ConfigError(f"{path}: kind is {m.get('kind')!r}, not 'prep'; data.prep_uri must name a prep output")
    try:
        tok = m["tokenizer"]
        splits = {name: Split(name, [storage.join(uri, s["name"]) for s in sp["shards"]],
                              [int(s["rows"]) for s in sp["shards"]])
                  for name, sp in m["splits"].items()}
        return PrepInfo(uri=uri, manifest_path=path, manifest_sha256=storage.sha256_bytes(raw),
                        seq_len=int(m["seq_len"]), vocab_size=int(tok["vocab_size"]),
                        eos_token_id=tok.get("eos_token_id"), pad_token_id=tok.get("pad_token_id"),
                        tokenizer_dir=storage.join(uri, tok.get("dir", "tokenizer")), splits=splits,
                        config_hash=m.get("config_hash"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: incomplete prep manifest (missing or bad {exc}); rerun the prep job") from None


def model_vocab_size(job: "TrainJob", prep: PrepInfo) -> int:
    """The model's vocabulary: model.vocab_size, the init_from config's, or the tokenizer's."""
    if job.model.init_from:
        import json
        import os

        cfg_path = os.path.join(job.model.init_from, "config.json")
        if not os.path.isfile(cfg_path):
            raise ConfigError(f"model.init_from: {job.model.init_from} has no config.json; give a Hugging Face "
                              "model directory (save_pretrained output)")
        hf = json.load(open(cfg_path))
        if hf.get("model_type") != "llama":
            raise ConfigError(f"model.init_from: {job.model.init_from} is a {hf.get('model_type')!r} model; "
                              "rayworks trains Llama-architecture models")
        return int(hf["vocab_size"])
    return job.model.vocab_size or prep.vocab_size


def check_job_inputs(job: "TrainJob") -> PrepInfo:
    """Checks the prep output against the train config; returns it.

    Raises:
        ConfigError: on a vocabulary mismatch, a missing split, or a model too short for seq_len.
    """
    prep = read_prep(job.data.prep_uri)
    train = prep.split(job.data.train_split, "data.train_split")
    if job.data.val_split is not None:
        prep.split(job.data.val_split, "data.val_split")
    vocab = model_vocab_size(job, prep)
    where = "model.init_from's config.json" if job.model.init_from else "model.vocab_size"
    if vocab < prep.vocab_size:
        raise ConfigError(f"{where}: vocab_size {vocab} is smaller than the prep tokenizer's {prep.vocab_size} "
                          f"({prep.manifest_path}); token ids would overflow the embedding. Remove "
                          "model.vocab_size (it defaults to the tokenizer's) or use a model with a matching "
                          "vocabulary")
    if vocab != prep.vocab_size and not job.model.init_from:
        raise ConfigError(f"model.vocab_size ({vocab}) does not match the prep tokenizer's vocab_size "
                          f"({prep.vocab_size}) in {prep.manifest_path}; remove model.vocab_size to use the "
                          "tokenizer's")
    if job.model.max_position_embeddings and job.model.max_position_embeddings < prep.seq_len:
        raise ConfigError(f"model.max_position_embeddings ({job.model.max_position_embeddings}) is shorter than "
                          f"the prep seq_len ({prep.seq_len}); raise it or prep shorter sequences")
    g = job.resolved_deepspeed(1)["train_batch_size"]
    if job.run.num_epochs is not None and int(job.run.num_epochs * train.num_rows) < g:
        raise ConfigError(f"run.num_epochs={job.run.num_epochs} over {train.num_rows} sequences is less than one "
                          f"global batch of {g}; train longer or lower deepspeed.train_batch_size")
    return prep


def num_steps(job: "TrainJob", prep: PrepInfo) -> int:
    """run.num_steps, or num_epochs converted with the global batch (at least 1)."""
    if job.run.num_steps is not None:
        return job.run.num_steps
    g = job.resolved_deepspeed(1)["train_batch_size"]
    rows = prep.splits[job.data.train_split].num_rows
    return max(1, int(job.run.num_epochs * rows) // g)
