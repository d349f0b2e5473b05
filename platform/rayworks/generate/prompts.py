"""Read prompts (JSON Lines, Parquet, plain text; local or object storage) and vet them.

Every input row gets its position (``index``) and a prompt id. Rows that cannot be
generated (no prompt, a prompt as long as the context, bad per-row sampling) become
error rows with a reason instead of being dropped; the rest are tokenized here once,
with the model's own tokenizer (and chat template), so the engine receives exactly
the token ids whose length was checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from dataclasses import dataclass, field

from rayworks.config.generate import ROW_SAMPLING_KEYS, GenerateJob
from rayworks.errors import ConfigError
from rayworks import storage

TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "vocab.json", "merges.txt", "tokenizer.model", "config.json",
                   "generation_config.json", "added_tokens.json"]


@dataclass
class Prompts:
    """The vetted input: rows to generate and rows that go to the errors file."""

    good: list[dict] = field(default_factory=list)    # index, id, prompt, token_ids, sampling (json str)
    errors: list[dict] = field(default_factory=list)  # index, id, error (a code), reason, prompt
    num_rows: int = 0
    files: list[str] = field(default_factory=list)
    sha256: list[str] = field(default_factory=list)


def input_files(path: str) -> list[str]:
    """The input file itself, or the data files in a folder (sorted: the order is the input's order)."""
    if storage.is_dir(path):
        files = [f for f in storage.list_files(path) if not f.rsplit("/", 1)[1].startswith((".", "_"))]
        if not files:
            raise ConfigError(f"input.path: folder {path} holds no files")
        return files
    return [path]


def read_rows(job: GenerateJob) -> tuple[list[dict], list[str], list[str]]:
    """All input rows as dicts in input order (file by file, line by line), the files and their sha256."""
    rows: list[dict] = []
    files = input_files(job.input.path)
    shas = []
    for f in files:
        fmt = storage.file_format(f, job.input.format)
        data = storage.read_bytes(f)
        shas.append(hashlib.sha256(data).hexdigest())
        if fmt == "parquet":
            import pyarrow.parquet as pq

            rows.extend(pq.read_table(io.BytesIO(data)).to_pylist())
        elif fmt == "jsonl":
            # Line by line rather than pyarrow.json: one malformed line is a bad row, not a failed job.
            for n, line in enumerate(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8")):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    obj = {"__error__": f"line {n + 1} of {f.rsplit('/', 1)[-1]} is not valid JSON: {exc.msg}"}
                rows.append(obj if isinstance(obj, dict) else {"__error__": "line is not a JSON object"})
        else:
            text = data.decode("utf-8")
            rows.extend({job.input.prompt_field: ln} for ln in text.splitlines() if ln.strip())
        if job.input.num_rows_limit and len(rows) >= job.input.num_rows_limit:
            break
    if job.input.num_rows_limit:
        rows = rows[: job.input.num_rows_limit]
    return rows, files[: len(shas)], shas


def load_tokenizer(model: str):
    """The model's tokenizer, copied locally first when the model lives on object storage."""
    from transformers import AutoTokenizer

    src = model
    if storage.is_remote(model):
        src = storage.local_copy(model, tempfile.mkdtemp(prefix="rayworks-tok-"), TOKENIZER_FILES)
    try:
        return AutoTokenizer.from_pretrained(src)
    except Exception as exc:  # noqa: BLE001 - many loader errors, one user-facing cause
        raise ConfigError(f"model: cannot load a tokenizer from {model} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]}); the folder needs tokenizer files beside the weights") from None


def row_sampling(job: GenerateJob, raw) -> dict:
    """Job sampling merged with one row's overrides; raises ValueError with the reason."""
    sp = job.sampling.model_dump()
    if raw is None:
        return sp
    if isinstance(raw, str):
        raw = json.loads(raw)
    if not isinstance(raw, dict):
        raise ValueError(f"{job.input.sampling_field} must be an object, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(ROW_SAMPLING_KEYS))
    if unknown:
        raise ValueError(f"{job.input.sampling_field} has unknown keys {unknown} (allowed: {list(ROW_SAMPLING_KEYS)})")
    merged = {**sp, **raw}
    try:
        from rayworks.config.generate import SamplingSpec

        merged = SamplingSpec.model_validate(merged).model_dump()
    except Exception as exc:  # noqa: BLE001 - pydantic's message is the reason we record
        raise ValueError(f"bad {job.input.sampling_field}: {str(exc).splitlines()[-1].strip()[:200]}") from None
    if merged["max_tokens"] >= job.engine.max_model_len:
        raise ValueError(f"max_tokens {merged['max_tokens']} >= context {job.engine.max_model_len}")
    return merged


def vet(job: GenerateJob, rows: list[dict], tokenizer) -> Prompts:
    """Assigns ids, applies the chat template, tokenizes and sorts rows into good and errors."""
    out = Prompts(num_rows=len(rows))
    pf, idf, sf = job.input.prompt_field, job.input.id_field, job.input.sampling_field
    seen: set[str] = set()
    texts: list[str] = []
    pending: list[dict] = []
    for i, row in enumerate(rows):
        pid = str(row.get(idf)) if idf and row.get(idf) is not None else str(i)
        code, reason = ("bad_json", row["__error__"]) if "__error__" in row else (None, None)
        prompt = row.get(pf)
        if reason is None and idf and row.get(idf) is None:
            code, reason = "missing_id", f"missing id field {idf!r}"
        elif reason is None and pid in seen:
            code, reason = "duplicate_id", f"duplicate prompt id {pid!r}"
        if reason is None and (not isinstance(prompt, str) or not prompt.strip()):
            code = "missing_prompt"
            reason = f"missing prompt field {pf!r}" if prompt is None else f"prompt field {pf!r} is empty or not text"
        sampling = None
        if reason is None:
            try:
                sampling = row_sampling(job, row.get(sf) if sf else None)
            except (ValueError, json.JSONDecodeError) as exc:
                code, reason = "bad_sampling", str(exc)
        seen.add(pid)
        if reason is not None:
            out.errors.append({"index": i, "id": pid, "error": code, "reason": reason, "prompt": _clip(prompt)})
            continue
        text = prompt
        if job.chat_template:
            msgs = ([{"role": "system", "content": job.system_prompt}] if job.system_prompt else [])
            msgs.append({"role": "user", "content": prompt})
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        texts.append(text)
        pending.append({"index": i, "id": pid, "prompt": prompt, "sampling": sampling})
    if texts:
        # A chat-templated text already carries its special tokens; a raw prompt gets them
        # the way vLLM's own LLM.generate(text) adds them.
        ids = tokenizer(texts, add_special_tokens=not job.chat_template)["input_ids"]
    else:
        ids = []
    limit = job.engine.max_model_len
    for p, tok in zip(pending, ids):
        if len(tok) >= limit:
            out.errors.append({"index": p["index"], "id": p["id"], "prompt": _clip(p["prompt"]), "error": "too_long",
                               "reason": f"prompt has {len(tok)} tokens; the context (engine.max_model_len) is "
                                         f"{limit} and at least one must be left to generate"})
            continue
        p["token_ids"] = list(tok)
        # What the engine may still generate: max_tokens, or less when the context runs out first.
        p["budget"] = min(p["sampling"]["max_tokens"], limit - len(tok))
        p["sampling"] = json.dumps(p["sampling"], sort_keys=True)
        out.good.append(p)
    out.errors.sort(key=lambda e: e["index"])
    return out


def load_prompts(job: GenerateJob, tokenizer) -> Prompts:
    """Reads and vets the job's input."""
    rows, files, shas = read_rows(job)
    p = vet(job, rows, tokenizer)
    p.files, p.sha256 = files, shas
    return p


def _clip(prompt, n: int = 1000):
    """The errors file shows enough of a bad prompt to find it, not all of a huge one."""
    return prompt[:n] if isinstance(prompt, str) else None
