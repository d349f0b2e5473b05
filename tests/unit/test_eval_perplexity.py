"""The perplexity scorer's arithmetic (no Ray): per-row NLL sums give the training loss exactly,
padding is not scored, JSONL documents become windows, the task folder is hashed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayworks.errors import ConfigError


@pytest.fixture(scope="module")
def model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_token_weighted_loss_equals_the_training_loss(model):
    import torch

    from rayworks.eval.perplexity import token_nll

    ids = torch.randint(0, 64, (5, 12), generator=torch.Generator().manual_seed(1))
    nll, count = token_nll(model, ids)
    assert count.tolist() == [11] * 5
    with torch.no_grad():
        want = model(input_ids=ids, labels=ids).loss.item()  # what the training loop's evaluate() averages
    assert nll.sum().item() / count.sum().item() == pytest.approx(want, rel=1e-6)


def test_padding_is_not_scored(model):
    import torch

    from rayworks.eval.perplexity import token_nll

    row = torch.randint(0, 64, (1, 7), generator=torch.Generator().manual_seed(2))
    padded = torch.cat([row, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 7), torch.zeros(1, 5)], dim=1).long()
    a, ca = token_nll(model, row)
    b, cb = token_nll(model, padded, mask)
    assert ca.item() == cb.item() == 6
    assert b.item() == pytest.approx(a.item(), rel=1e-5)


class _Tok:
    eos_token_id = 0

    def __call__(self, text):
        return {"input_ids": [ord(c) for c in text]}


def test_jsonl_documents_become_windows_with_eos(tmp_path: Path):
    from rayworks.eval.perplexity import jsonl_windows

    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "abcde"}) + "\n\n" + json.dumps({"text": "xy"}) + "\n")
    w = jsonl_windows([str(f)], "text", _Tok(), 4)
    # "abcde"+EOS -> [a b c d] [e EOS]; "xy"+EOS -> [x y EOS]
    assert [x.tolist() for x in w] == [[97, 98, 99, 100], [101, 0], [120, 121, 0]]
    f.write_text('{"body": "no text field"}\n')
    with pytest.raises(ConfigError, match=r"d.jsonl:1 .*'text'"):
        jsonl_windows([str(f)], "text", _Tok(), 4)


def test_split_shards_come_from_the_prep_manifest(tmp_path: Path):
    from rayworks.eval.perplexity import split_shards

    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "prep", "splits": {
        "val": {"shards": [{"name": "val/a.parquet", "rows": 3}, {"name": "val/b.parquet", "rows": 0}]}}}))
    assert split_shards(str(tmp_path), "val") == [str(tmp_path / "val" / "a.parquet")]
    with pytest.raises(ConfigError, match="'test' is not a split"):
        split_shards(str(tmp_path), "test")


def test_task_files_are_hashed_and_the_key_is_read_from_its_file(tmp_path: Path):
    from rayworks.config.eval import EndpointSpec
    from rayworks.eval.harness import api_key, model_args, task_files

    (tmp_path / "t.yaml").write_text("task: t\n")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.jsonl").write_text("{}\n")
    files = task_files(str(tmp_path))
    assert [f["path"] for f in files] == ["d/x.jsonl", "t.yaml"] and all(len(f["sha256"]) == 64 for f in files)
    keys = tmp_path / "keys"
    keys.write_text("\nrw-secret\nrw-other\n")
    ep = EndpointSpec(base_url="http://127.0.0.1:9/app/", model_id="m", api_key_file=str(keys))
    assert api_key(ep) == "rw-secret"
    from rayworks.config.eval import HarnessSpec

    name, args = model_args(HarnessSpec(include_path="x", tasks=["t"], backend="endpoint", endpoint=ep), "/m", "cpu")
    assert name == "local-completions" and args["base_url"] == "http://127.0.0.1:9/app/v1/completions"
    assert args["tokenizer"] == "/m" and "rw-secret" not in json.dumps(args)  # the key travels by env, not args
    keys.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        api_key(ep)
