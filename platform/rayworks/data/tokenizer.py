"""The tokenizer stage: load a Hugging Face tokenizer or train a byte-level BPE one.

Either way the result is saved into the output as a ``PreTrainedTokenizerFast``
directory with an end-of-text token, a pad token and a chat template, so training
(which reads the ids) and serving (whose chat endpoint needs the template) use
exactly the same tokenizer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from pathlib import Path

from rayworks import storage
from rayworks.errors import ConfigError

# Role headers as plain text, the same layout as tests/tinymodel.py: any tokenizer can render it.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def train_tokenizer(texts: list[str], cfg: dict):
    """Trains a byte-level BPE tokenizer on ``texts`` (in the given order)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    specials = [cfg["eos_token"], cfg["pad_token"]] + [t for t in cfg["extra_special_tokens"]
                                                      if t not in (cfg["eos_token"], cfg["pad_token"])]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=cfg["vocab_size"], min_frequency=cfg["min_frequency"],
                            special_tokens=specials, show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=cfg["eos_token"],
                                  eos_token=cfg["eos_token"], unk_token=cfg["eos_token"],
                                  pad_token=cfg["pad_token"])
    if cfg["extra_special_tokens"]:
        tok.add_special_tokens({"additional_special_tokens": list(cfg["extra_special_tokens"])})
    tok.chat_template = CHAT_TEMPLATE
    return tok


GENERIC_FAST = ("PreTrainedTokenizerFast", "TokenizersBackend")  # what save_pretrained of a plain fast tokenizer writes


def _tokenizer_class(path: str) -> str | None:
    try:
        return json.loads((Path(path) / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None  # AutoTokenizer decides, and reports what it cannot read


def load_tokenizer(path: str, cfg: dict):
    """Loads a local HF tokenizer dir; gives it a pad token (eos) and chat template if it lacks them."""
    from transformers import PreTrainedTokenizerFast

    if not (Path(path) / "tokenizer.json").is_file():
        raise ConfigError(f"tokenizer.path: {path} has no tokenizer.json; give a Hugging Face tokenizer "
                          "directory (save_pretrained output) or unset tokenizer.path to train one")
    if _tokenizer_class(path) in GENERIC_FAST:
        # The class AutoTokenizer would pick, without importing it: AutoTokenizer imports torch
        # (~5 s and ~550 MiB here), a fifth of a 100 MB prep.
        tok = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise ConfigError(f"tokenizer.path: {path} loads as {type(tok).__name__}; a fast tokenizer is needed")
    if tok.eos_token is None:
        if cfg["eos_token"] not in tok.get_vocab():
            raise ConfigError(f"tokenizer.path: {path} has no eos token and no {cfg['eos_token']!r} in its "
                              "vocabulary; set tokenizer.eos_token to one of its tokens")
        tok.eos_token = cfg["eos_token"]
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # adding a token would change the vocab the model was built for
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    return tok


def save_tokenizer(tok, out_uri: str) -> dict:
    """Saves into ``out_uri`` (local or remote); returns the manifest's tokenizer entry."""
    with tempfile.TemporaryDirectory(prefix="rayworks-tok-") as d:
        tok.save_pretrained(d)
        files = sorted(os.listdir(d))
        h = hashlib.sha256()
        for name in files:
            data = Path(d, name).read_bytes()
            h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
            storage.write_bytes(storage.join(out_uri, name), data)
    return {"dir": "tokenizer", "sha256": h.hexdigest(), "files": files, "vocab_size": len(tok),
            "eos_token": tok.eos_token, "eos_token_id": tok.eos_token_id,
            "pad_token": tok.pad_token, "pad_token_id": tok.pad_token_id}


def load_and_save(path: str, cfg: dict, out_uri: str) -> dict:
    """load_tokenizer, then save_tokenizer (one step, so the prep job runs it in a worker)."""
    return save_tokenizer(load_tokenizer(path, cfg), out_uri)


def train_and_save(texts: list[str], cfg: dict, out_uri: str) -> dict:
    """train_tokenizer, then save_tokenizer (one step, so the prep job runs it in a worker)."""
    return save_tokenizer(train_tokenizer(texts, cfg), out_uri)


@functools.lru_cache(maxsize=1)
def backend(tokenizer_json: bytes):
    """The Rust ``tokenizers.Tokenizer`` behind a saved tokenizer.json (what workers encode with).

    One per process and tokenizer: a worker packs many units, and each ``Tokenizer`` it builds
    keeps about 8 MiB after it is dropped (measured with tokenizers 0.23: 33 units took a
    process from 367 to 622 MiB), so building one per unit grew each pack worker to ~0.9 GiB at 1 GB.
    """
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tokenizer_json.decode("utf-8"))
