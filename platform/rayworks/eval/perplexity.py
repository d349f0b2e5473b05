"""Exact token-weighted loss of a model on data, as a Ray Data batch job.

Each row is one token sequence (a prep split's packed ``input_ids``, or a window of a JSONL
document). A :class:`Scorer` actor holds the model in fp32 and returns, per row, the summed
negative log-likelihood of every token after the first and the number of such tokens; the
driver adds them up exactly (``math.fsum``: the order batches return in does not matter). The
loss is ``sum(nll) / sum(tokens)``: the mean over tokens, which for a prep split (every row the same length, no padding) is exactly what the
training loop's validation reports (its per-batch mean times batch size, summed and divided).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

import numpy as np

from rayworks import storage
from rayworks.errors import ConfigError


@dataclass(frozen=True)
class Score:
    """The loss of one model on one data source."""

    source: str
    num_sequences: int
    num_tokens: int
    nll_sum: float
    wall_s: float

    @property
    def loss(self) -> float:
        return self.nll_sum / self.num_tokens if self.num_tokens else float("nan")

    def as_dict(self) -> dict:
        return {"source": self.source, "num_sequences": self.num_sequences, "num_tokens": self.num_tokens,
                "loss": self.loss, "perplexity": math.exp(self.loss) if self.num_tokens else None,
                "wall_s": round(self.wall_s, 3), "tokens_per_s": self.num_tokens / max(self.wall_s, 1e-9)}


def token_nll(model, input_ids, attention_mask=None):
    """Per-row (sum of next-token NLL, number of scored tokens), fp32 logits, no reduction across rows.

    Shared by the Ray Data scorer and the unit tests so both compute the same thing.
    """
    import torch

    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
        target = input_ids[:, 1:]
        logp = torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        mask = torch.ones_like(target, dtype=torch.bool) if attention_mask is None else attention_mask[:, 1:].bool()
        nll = (-logp * mask).sum(dim=1, dtype=torch.float64)
        return nll, mask.sum(dim=1)


class Scorer:
    """A Ray Data actor: one fp32 copy of the model, scoring batches of padded rows."""

    def __init__(self, model_dir: str, device: str = "cpu", num_threads: int = 1):
        import torch
        from transformers import AutoModelForCausalLM

        from rayworks.eval.model import local_model_dir

        torch.set_num_threads(max(1, num_threads))
        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(local_model_dir(model_dir), dtype=torch.float32)
        self.model.to(device).eval()

    def __call__(self, batch: dict) -> dict:
        import torch

        ids = torch.from_numpy(np.stack(batch["input_ids"]).astype(np.int64)).to(self.device)
        lengths = torch.from_numpy(np.asarray(batch["length"], dtype=np.int64))
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).to(self.device)
        # Without padding the mask changes nothing, and None keeps the exact kernels training used.
        nll, count = token_nll(self.model, ids, None if bool(mask.all()) else mask.long())
        return {"nll_sum": nll.cpu().numpy(), "num_tokens": count.cpu().numpy()}


def split_shards(prep_uri: str, split: str) -> list[str]:
    """The Parquet shard URIs of a prep output's split, in manifest order."""
    path = storage.join(prep_uri, "manifest.json")
    if not storage.exists(path):
        raise ConfigError(f"perplexity.prep_uri: no manifest.json at {path}; give a prep output folder")
    m = json.loads(storage.read_bytes(path))
    if m.get("kind") != "prep":
        raise ConfigError(f"{path}: kind is {m.get('kind')!r}, not 'prep'; perplexity.prep_uri must name a prep output")
    splits = m.get("splits") or {}
    if split not in splits:
        raise ConfigError(f"perplexity.split: {split!r} is not a split of {prep_uri} (it has {sorted(splits)})")
    shards = [storage.join(prep_uri, s["name"]) for s in splits[split]["shards"] if s.get("rows")]
    if not shards:
        raise ConfigError(f"perplexity.split: split {split!r} of {prep_uri} has no sequences")
    return shards


def prep_rows(prep_uri: str, split: str, max_sequences: int | None):
    """A Ray dataset of the split's rows (input_ids, length), first max_sequences only."""
    import ray.data

    ds = ray.data.read_parquet(split_shards(prep_uri, split), columns=["input_ids"])
    if max_sequences:
        ds = ds.limit(max_sequences)

    def add(batch: dict) -> dict:
        ids = batch["input_ids"]
        return {"input_ids": ids, "length": np.full(len(ids), len(ids[0]) if len(ids) else 0, dtype=np.int64)}

    return ds.map_batches(add, batch_format="numpy")


def jsonl_windows(paths: list[str], text_field: str, tokenizer, seq_len: int) -> list[np.ndarray]:
    """Each document tokenized (EOS appended) and cut into windows of at most seq_len tokens, in file order."""
    out: list[np.ndarray] = []
    for p in paths:
        for n, line in enumerate(storage.read_bytes(p).decode("utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[text_field]
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"perplexity.jsonl: {p}:{n} is not a JSON object with a string "
                                  f"{text_field!r} field (perplexity.text_field)") from None
            ids = tokenizer(text)["input_ids"] + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
            out.extend(np.asarray(ids[i:i + seq_len], dtype=np.int32) for i in range(0, len(ids), seq_len)
                       if len(ids[i:i + seq_len]) >= 2)
    return out


def window_rows(windows: list[np.ndarray], seq_len: int, pad_id: int):
    """Windows padded to seq_len as a Ray dataset (input_ids, length)."""
    import ray.data

    ids = np.full((len(windows), seq_len), pad_id, dtype=np.int32)
    for i, w in enumerate(windows):
        ids[i, :len(w)] = w
    return ray.data.from_items([{"input_ids": ids[i], "length": len(w)} for i, w in enumerate(windows)])


def score(ds, model_dir: str, source: str, spec, device: str = "cpu") -> Score:
    """Runs the scorer actors over ``ds`` and adds up their per-row sums."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # the same batches every run, so the same per-row sums
    t0 = time.time()
    out = ds.map_batches(Scorer, fn_constructor_args=(model_dir, device, int(spec.num_cpus_per_actor)),
                         batch_size=spec.batch_size, batch_format="numpy",
                         compute=ray.data.ActorPoolStrategy(size=spec.num_actors),
                         num_cpus=spec.num_cpus_per_actor, num_gpus=1 if device == "cuda" else 0)
    nll: list[float] = []
    num_tokens = 0
    for b in out.iter_batches(batch_size=None, batch_format="numpy"):
        nll.extend(b["nll_sum"].tolist())
        num_tokens += int(b["num_tokens"].sum())
    # fsum is exactly rounded: the total does not depend on the order the batches came back in.
    return Score(source=source, num_sequences=len(nll), num_tokens=num_tokens, nll_sum=math.fsum(nll),
                 wall_s=time.time() - t0)
