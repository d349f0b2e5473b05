"""Training: Ray Train's TorchTrainer driving DeepSpeed ZeRO, checkpoints that resume, HF export.

Modules: ``model`` (Llama presets), ``flops`` (FLOPs/MFU), ``inputs`` (prep manifest),
``data`` (deterministic, skippable Ray Data batches), ``loop`` (the per-worker loop),
``export`` (ZeRO shards -> Hugging Face dir), ``job`` (the runner), ``cli``.
"""
