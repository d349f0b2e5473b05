"""Export: a DeepSpeed checkpoint -> a Hugging Face directory that transformers and vLLM load.

ZeRO shards are consolidated with DeepSpeed's own ``zero_to_fp32`` tools; the
weights go into a LlamaForCausalLM built from the checkpoint's ``model_config.json``
and are saved as safetensors, beside the prep output's tokenizer (given a chat
template if it has none) and the common artifact ``manifest.json`` (kind ``export``;
a byte-identical ``rayworks_export.json`` is kept for older readers). When the checkpoint holds the
trained model's logits on a fixed input, the export reloads itself and records the
largest difference, so a broken export cannot pass silently.
"""

from __future__ import annotations

import json
import os
import tempfile

from rayworks import artifacts, storage
from rayworks.errors import ConfigError
from rayworks.train.loop import CKPT_TAG, MODEL_CONFIG_FILE, PROBE_FILE, STATE_FILE

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def consolidated_state_dict(ckpt_dir: str) -> dict:
    """fp32 weights from a DeepSpeed checkpoint dir (ZeRO 1-3 shards, or stage 0's module file)."""
    import glob

    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # consolidation needs no GPU
    tag_dir = os.path.join(ckpt_dir, CKPT_TAG)
    if glob.glob(os.path.join(tag_dir, "*zero_pp_rank_*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(ckpt_dir, tag=CKPT_TAG)
    import torch

    # Stage 0 without a ZeRO-style optimizer: rank 0's module state is the whole model.
    sd = torch.load(os.path.join(tag_dir, "mp_rank_00_model_states.pt"), map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in sd["module"].items()}


def _local(uri: str) -> tuple[str, tempfile.TemporaryDirectory | None]:
    if not storage.is_uri(uri):
        return uri, None
    tmp = tempfile.TemporaryDirectory(prefix="rw-export-src-")
    storage.copy_dir(uri, tmp.name)
    return tmp.name, tmp


def export_checkpoint(checkpoint: str, out: str, tokenizer_dir: str | None = None, dtype: str = "auto") -> dict:
    """Consolidates a rayworks DeepSpeed checkpoint into a Hugging Face directory.

    Args:
        checkpoint: checkpoint directory (local or URI) written by the training loop.
        out: output directory (local or URI); replaced only once the new export is complete.
        tokenizer_dir: tokenizer to ship with it; default: the prep output's, from the checkpoint's metadata.
        dtype: "float32", "bfloat16", or "auto" (bf16 if the run trained in bf16).

    Returns:
        The export manifest (written as manifest.json and rayworks_export.json).

    Raises:
        ConfigError: ``out`` is a folder rayworks must not replace (the current or home folder, a
            folder of the user's, another kind of artifact), or ``checkpoint`` is not a checkpoint.
    """
    # Before any work: an export replaces ``out`` whole, so it must be an export's (or new).
    artifacts.check_output_dir(out, None, "out", kind="export")
    import torch
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    from rayworks.train.model import make_llama_config

    src, src_tmp = _local(checkpoint)
    try:
        meta_path = os.path.join(src, STATE_FILE)
        if not os.path.isfile(meta_path) or not os.path.isdir(os.path.join(src, CKPT_TAG)):
            raise ConfigError(f"{checkpoint}: not a rayworks training checkpoint (no {STATE_FILE} or {CKPT_TAG}/); "
                              "give a checkpoint_XXXXXXXX directory of a train run")
        meta = json.load(open(meta_path))
        model_cfg = json.load(open(os.path.join(src, MODEL_CONFIG_FILE)))
        state = consolidated_state_dict(src)
        torch_dtype = torch.bfloat16 if dtype == "bfloat16" or (dtype == "auto" and meta.get("bf16")) \
            else torch.float32
        with torch.device("meta"):
            model = LlamaForCausalLM(make_llama_config(model_cfg))
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if unexpected or [k for k in missing if "rotary" not in k]:
            raise RuntimeError(f"checkpoint does not match its model config: missing {missing[:5]}, "
                               f"unexpected {unexpected[:5]}")
        model.model.rotary_emb = type(model.model.rotary_emb)(config=model.config)  # buffers, not weights
        model = model.to(torch_dtype)
        model.config.dtype = torch_dtype
        model.generation_config.eos_token_id = model_cfg.get("eos_token_id")
        model.generation_config.pad_token_id = model_cfg.get("pad_token_id")

        with tempfile.TemporaryDirectory(prefix="rw-export-") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok_src = tokenizer_dir or (meta.get("prep") or {}).get("tokenizer_dir")
            if not tok_src:
                raise ConfigError(f"{checkpoint}: no tokenizer recorded; pass --tokenizer DIR")
            tok_local, tok_tmp = _local(tok_src)
            try:
                tok = PreTrainedTokenizerFast.from_pretrained(tok_local)
            finally:
                if tok_tmp:
                    tok_tmp.cleanup()
            if not tok.chat_template:
                tok.chat_template = DEFAULT_CHAT_TEMPLATE
            tok.save_pretrained(tmp)
            prep = meta.get("prep") or {}
            probe = os.path.join(src, PROBE_FILE)
            probe_diff_value = probe_diff(tmp, probe) if os.path.isfile(probe) else None
            inputs = [artifacts.input_ref("checkpoint", src)]
            inputs[0]["path"] = checkpoint  # the files were hashed from the local copy; name the original
            if prep.get("manifest_path"):
                inputs.append({"role": "prep", "path": prep["manifest_path"], "sha256": prep.get("manifest_sha256")})
            manifest = artifacts.build(
                "export", meta.get("run_name"), meta.get("config_hash"), inputs, artifacts.describe_files(tmp),
                artifacts.versions("export"),
                checkpoint=checkpoint, step=meta["step"], optimizer_steps=meta.get("optimizer_steps"),
                train_loss=meta.get("train_loss"), val_loss=meta.get("val_loss"),
                val_loss_step0=meta.get("val_loss_step0"), dtype=str(torch_dtype).replace("torch.", ""),
                data_digest=meta.get("data_digest"),
                prep_manifest={"path": prep.get("manifest_path"), "sha256": prep.get("manifest_sha256")},
                run_name=meta.get("run_name"), train_config=meta.get("train_config"))
            if probe_diff_value is not None:
                manifest["probe_max_abs_logit_diff"] = probe_diff_value
            data = storage.dumps_json(manifest)
            # The marker travels with the folder: the published export is claimed as rayworks's.
            with open(os.path.join(tmp, artifacts.MARKER), "wb") as fh:
                fh.write(storage.dumps_json({"kind": "export"}))
            for name in artifacts.LEGACY_MANIFESTS + (artifacts.MANIFEST,):  # the manifest last
                with open(os.path.join(tmp, name), "wb") as fh:
                    fh.write(data)
            # Replaces an earlier export only once this one is complete (never delete-then-copy).
            storage.publish_dir(tmp, out)
        return manifest
    finally:
        if src_tmp:
            src_tmp.cleanup()


def probe_diff(hf_dir: str, probe_path: str) -> float:
    """Largest |logit| difference between the reloaded export and the trained model on the probe input."""
    import torch
    from transformers import AutoModelForCausalLM

    probe = torch.load(probe_path, map_location="cpu")
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=probe["input_ids"]).logits.float()
    return float((logits - probe["logits"]).abs().max())
