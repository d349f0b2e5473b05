"""A tiny Llama + byte-level BPE tokenizer the tests build themselves (nothing is downloaded).

`make_tiny_model(out_dir)` trains a small tokenizer on the standard library's own
docs, saves it as a PreTrainedTokenizerFast with a chat template, and saves a
random-init 2-layer Llama beside it: a directory both transformers and vLLM load.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def corpus_lines(limit: int = 4000) -> list[str]:
    import pydoc_data.topics as t

    text = "\n".join(t.topics.values())
    return [ln for ln in text.splitlines() if ln.strip()][:limit]


def make_tokenizer(out_dir: Path, vocab_size: int = 512):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus_lines(), vocab_size=vocab_size, min_frequency=2,
                            special_tokens=["<|endoftext|>", "<|pad|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>", pad_token="<|pad|>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    return tok


def make_tiny_model(out_dir: str | Path, seed: int = 0, vocab_size: int = 512, hidden: int = 256,
                    layers: int = 2, max_pos: int = 512) -> Path:
    """Saves a random-init tiny Llama and its tokenizer into out_dir (safetensors)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(out, vocab_size)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 4,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=max_pos, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    (out / "rayworks_export.json").write_text(json.dumps({"kind": "export", "source": "tests/tinymodel.py", "seed": seed}))
    return out


if __name__ == "__main__":
    import sys

    print(make_tiny_model(sys.argv[1]))
