"""Where the eval job's model files are read from: a local folder, or a local copy of a URI."""

from __future__ import annotations

import os
import tempfile

from rayworks import storage

_copies: dict[str, str] = {}


def local_model_dir(model: str) -> str:
    """A local folder with the model's files (an object-store export is copied once per process)."""
    if not storage.is_uri(model):
        return model
    if model not in _copies:
        dest = tempfile.mkdtemp(prefix="rw-eval-model-")
        storage.copy_dir(model, dest)
        _copies[model] = dest
    return _copies[model]


def load_tokenizer(model: str):
    """The tokenizer saved beside the model (training exports ship their prep tokenizer)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(local_model_dir(model))


def max_positions(model: str) -> int | None:
    """The model's context length from its config.json (None if it does not say)."""
    import json

    cfg = json.load(open(os.path.join(local_model_dir(model), "config.json")))
    return cfg.get("max_position_embeddings")
