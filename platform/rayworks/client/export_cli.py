"""`rayworks export CHECKPOINT OUT`: a training checkpoint -> a Hugging Face directory."""

from __future__ import annotations


def cmd_export(a) -> int:
    from rayworks.train.export import export_checkpoint

    m = export_checkpoint(a.checkpoint, a.out, tokenizer_dir=a.tokenizer, dtype=a.dtype)
    diff = m.get("probe_max_abs_logit_diff")
    print(f"exported step {m['step']} of {a.checkpoint} to {a.out}"
          + (f" (reloaded: max |logit diff| {diff:.2e} on the probe input)" if diff is not None else ""))
    return 0


def register(sub) -> None:
    """Adds `export` to the rayworks CLI."""
    p = sub.add_parser("export", help="consolidate a train checkpoint (ZeRO shards) into a Hugging Face dir")
    p.add_argument("checkpoint", help="checkpoint directory of a train run, e.g. "
                                      "artifacts/train/NAME/ray_train/checkpoint_00000200 (local or s3:// / gs://)")
    p.add_argument("out", help="output directory (local or s3:// / gs://); replaced if it exists")
    p.add_argument("--tokenizer", help="tokenizer dir to ship (default: the prep output's, from the checkpoint)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="weights dtype (auto: bf16 if trained in bf16)")
    p.set_defaults(func=cmd_export)
