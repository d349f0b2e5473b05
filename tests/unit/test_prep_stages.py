"""Unit tests of each prep stage on small inputs (no Ray)."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rayworks import storage
from rayworks.data.clean import clean_texts, clean_unit, content_hash, score, unit_key
from rayworks.data.dedup import dedup_bucket, dropped_keys_for_unit, duplicate_keys
from rayworks.data.inputs import plan_units
from rayworks.data.pack import encode_stream, entropy_nats, pack_unit
from rayworks.data.read import BadFile, decode, iter_line_ranges, read_part

CLEAN = {"normalize": "NFC", "strip_control": True, "min_chars": 3, "max_chars": 50, "on_decode_error": "replace"}


def _file(path: Path, fmt: str, mode: str = "file", field: str = "text") -> dict:
    return {"path": str(path), "size_bytes": path.stat().st_size, "format": fmt, "text_mode": mode, "text_field": field}


# --- read -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("block", [5, 64, 1 << 20])
def test_byte_ranges_cover_every_line_exactly_once(tmp_path, block):
    lines = [("line %d " % i + "x" * random.Random(i).randrange(0, 40)).encode() for i in range(300)]
    p = tmp_path / "a.txt"
    p.write_bytes(b"\n".join(lines))  # no trailing newline on purpose
    size = p.stat().st_size
    rng = random.Random(block)
    for n in (1, 2, 5, 17):
        cuts = sorted({0, size, *(rng.randrange(size) for _ in range(n - 1))})
        with open(p, "rb") as f:
            got = [ln for s, e in zip(cuts, cuts[1:]) for batch in iter_line_ranges(f, s, e, block) for ln in batch]
        assert got == lines


def test_decode_replace_and_drop():
    assert decode([b"ok", b"caf\xc3\xa9"], "drop") == (["ok", "café"], 0, 0)
    assert decode([b"ok", b"bad\xff"], "drop") == (["ok"], 1, 0)
    assert decode([b"ok", b"bad\xff"], "replace") == (["ok", "bad\ufffd"], 0, 1)
    assert decode([b"nul\x00inside", b"x"], "drop") == (["nul\x00inside", "x"], 0, 0)


def test_jsonl_parquet_and_text_readers(tmp_path):
    j = tmp_path / "a.jsonl"
    j.write_text('{"text": "one"}\n\n{"text": "two", "x": 1}\n{"body": "three"}\n')
    with pytest.raises(BadFile, match="no field 'text'"):
        list(read_part(_file(j, "jsonl"), 0, None, "replace", 10**6))
    j.write_text('{"text": "one"}\n{"text": 5}\n')
    with pytest.raises(BadFile, match="not a string"):
        list(read_part(_file(j, "jsonl"), 0, None, "replace", 10**6))
    pq.write_table(pa.table({"content": ["a", None, "b"]}), tmp_path / "a.parquet")
    got = list(read_part(_file(tmp_path / "a.parquet", "parquet", field="content"), 0, None, "replace", 10**6))
    assert got[0][0] == ["a", "", "b"] and got[0][1]["read"] == 3
    with pytest.raises(BadFile, match="no column 'text'"):
        list(read_part(_file(tmp_path / "a.parquet", "parquet"), 0, None, "replace", 10**6))
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(BadFile, match="cannot read"):
        list(read_part(_file(tmp_path / "bad.parquet", "parquet"), 0, None, "replace", 10**6))
    t = tmp_path / "big.txt"
    t.write_text("x" * 100)
    assert list(read_part(_file(t, "text"), 0, None, "replace", 50)) == [([], {"read": 1, "too_long": 1})]


# --- plan -----------------------------------------------------------------------------------------

def test_units_group_small_files_and_cut_big_line_files():
    files = [{"path": f"f{i}", "size_bytes": s, "format": fmt, "text_mode": mode, "text_field": "text"}
             for i, (s, fmt, mode) in enumerate([(30, "text", "file"), (30, "text", "file"), (250, "jsonl", "line"),
                                                 (250, "parquet", "file"), (10, "text", "line")])]
    units = plan_units(files, 100)
    parts = [[(p["file"], p["start"], p["end"]) for p in u["parts"]] for u in units]
    assert parts == [[(0, 0, None), (1, 0, None)], [(2, 0, 84)], [(2, 84, 168)], [(2, 168, 250)],
                     [(3, 0, None)], [(4, 0, None)]]
    assert plan_units(files, 100) == units  # pure function of files and size


# --- clean ----------------------------------------------------------------------------------------

def test_clean_rules_and_drop_reasons():
    texts = ["cafe\u0301 ok", "bell\x07 \x85and\ttab\r\nnext", "  ", "ab", "y" * 51, "fine text"]
    kept, drops = clean_texts(texts, "NFC", True, 3, 50)
    assert kept == ["caf\u00e9 ok", "bell and\ttab\nnext", "fine text"]
    assert drops == Counter({"empty": 1, "too_short": 1, "too_long": 1})
    kept, _ = clean_texts(["\ufb01ne"], "NFKC", False, 1, 50)
    assert kept == ["fine"]


def test_clean_unit_skips_a_bad_file_entirely(tmp_path):
    good = tmp_path / "good.txt"
    good.write_bytes(b"first line\nsecond line\nfirst line\n\xff\xfe bytes\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "kept before the error?"}\n{oops\n')
    files = [_file(good, "text", "line"), _file(bad, "jsonl")]
    unit = {"unit": 3, "parts": [{"file": 0, "start": 0, "end": None}, {"file": 1, "start": 0, "end": None}]}
    r = clean_unit(unit, files, CLEAN, [], str(tmp_path / "u.parquet"))
    assert r["documents_read"] == 4 and r["documents_kept"] == 4 and r["replaced_undecodable"] == 1
    assert r["bad_files"][0]["path"] == str(bad) and "invalid JSON" in r["bad_files"][0]["error"]
    t = pq.read_table(tmp_path / "u.parquet")
    assert t.column("text").to_pylist()[:3] == ["first line", "second line", "first line"]
    assert t.column("key").to_pylist() == [unit_key(3, i) for i in range(4)]
    assert t.column("hash").to_pylist()[0] == hashlib.blake2b(b"first line", digest_size=16).digest()
    r2 = clean_unit(unit, files, CLEAN, [str(bad)], str(tmp_path / "u2.parquet"))
    assert r2["bad_files"] == [] and r2["skipped_parts"] == 1 and r2["documents_kept"] == 4


def test_scores_are_uniform_and_seeded():
    hs = [content_hash(str(i)) for i in range(2000)]
    s = [score(h, b"split", 0) for h in hs]
    assert 0.45 < sum(x < 0.5 for x in s) / len(s) < 0.55
    assert s != [score(h, b"split", 1) for h in hs]


# --- dedup ----------------------------------------------------------------------------------------

def test_duplicate_keys_keep_the_first_copy():
    h = np.array([list(content_hash(t)) for t in ["a", "b", "a", "c", "b", "a"]], dtype=np.uint8)
    keys = np.array([50, 10, 20, 30, 40, 5], dtype=np.int64)
    assert duplicate_keys(keys, h).tolist() == [20, 40, 50]  # "a" keeps key 5, "b" keeps 10


def test_buckets_together_find_every_duplicate(tmp_path):
    rng = random.Random(0)
    unit_paths, all_rows = [], []
    for u in range(3):
        texts = [f"doc {rng.randrange(40)}" for _ in range(60)]
        keys = [unit_key(u, i) for i in range(len(texts))]
        all_rows += list(zip(keys, texts))
        p = tmp_path / f"u{u}.parquet"
        pq.write_table(pa.table({"key": pa.array(keys, pa.int64()),
                                 "hash": pa.array([content_hash(t) for t in texts], pa.binary(16)),
                                 "text": texts}), p)
        unit_paths.append(str(p))
    seen, want = set(), set()
    for k, t in sorted(all_rows):
        (want.add(k) if t in seen else seen.add(t))
    for nb in (1, 4):
        bucket_paths = [str(tmp_path / f"b{nb}-{b}.parquet") for b in range(nb)]
        total = sum(dedup_bucket(b, nb, unit_paths, bucket_paths[b])["duplicates"] for b in range(nb))
        assert total == len(want)
        got = set().union(*(dropped_keys_for_unit(u, bucket_paths) for u in range(3)))
        assert got == want


# --- tokenize + pack ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tok_json(tmp_path_factory):
    from rayworks.data.tokenizer import save_tokenizer, train_tokenizer

    cfg = {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>", "extra_special_tokens": [], "vocab_size": 300,
           "min_frequency": 2}
    tok = train_tokenizer([f"document number {i} says hello" for i in range(200)], cfg)
    d = tmp_path_factory.mktemp("tok")
    entry = save_tokenizer(tok, str(d))
    return d, entry


def test_tokenizer_is_a_loadable_chat_capable_hf_dir(tok_json):
    from transformers import AutoTokenizer

    d, entry = tok_json
    tok = AutoTokenizer.from_pretrained(str(d), local_files_only=True)
    assert len(tok) == entry["vocab_size"] and tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert entry["eos_token_id"] == tok.eos_token_id and entry["pad_token_id"] == tok.pad_token_id
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|user|>\nhi\n<|assistant|>\n"


def test_loading_a_plain_fast_tokenizer_skips_torch_and_saves_what_autotokenizer_would(tmp_path, tok_json):
    from transformers import AutoTokenizer

    from rayworks.data.tokenizer import load_and_save, save_tokenizer

    d, _ = tok_json
    code = ("import json, sys; from rayworks.data.tokenizer import load_and_save; "
            f"e = load_and_save({str(d)!r}, {{}}, {str(tmp_path / 'light')!r}); "
            "print(json.dumps({'torch': 'torch' in sys.modules, 'sha256': e['sha256']}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=100)
    light = json.loads(out.stdout.strip().splitlines()[-1])
    assert light["torch"] is False
    assert light["sha256"] == save_tokenizer(AutoTokenizer.from_pretrained(str(d), local_files_only=True),
                                             str(tmp_path / "auto"))["sha256"]
    assert load_and_save(str(d), {}, str(tmp_path / "here"))["sha256"] == light["sha256"]


def test_pack_unit_rows_tails_and_split(tmp_path, tok_json):
    from rayworks.data.tokenizer import backend

    d, entry = tok_json
    tj = (d / "tokenizer.json").read_bytes()
    texts = [f"document number {i} says hello" * (1 + i % 3) for i in range(40)] + ["document number 0 says hello"]
    keys = [unit_key(2, i) for i in range(len(texts))]
    docs = tmp_path / "u.parquet"
    langs = ["en" if i % 4 else "de" for i in range(len(texts))]
    scores = [0.5 + i / 100 for i in range(len(texts))]
    pq.write_table(pa.table({"key": pa.array(keys, pa.int64()),
                             "hash": pa.array([content_hash(t) for t in texts], pa.binary(16)), "text": texts,
                             "lang": langs, "lang_score": pa.array(scores, pa.float32())}), docs)
    bucket = tmp_path / "b.parquet"
    pq.write_table(pa.table({"key": pa.array([keys[-1]], pa.int64())}), bucket)
    r = pack_unit(2, str(docs), [str(bucket)], tj, entry["eos_token_id"], entry["vocab_size"], 16, 0.2, 0,
                  str(tmp_path / "out"), str(tmp_path / "counts"))
    assert r["duplicates_dropped"] == 1
    tr, va = r["splits"]["train"], r["splits"]["val"]
    assert tr["documents"] + va["documents"] == 40 and va["documents"] > 0
    tok = backend(tj)
    n_tokens = sum(len(tok.encode(t, add_special_tokens=False).ids) + 1 for t in texts[:40])
    assert tr["tokens"] + va["tokens"] == n_tokens
    for name, s in (("train", tr), ("val", va)):
        t = pq.read_table(tmp_path / "out" / name / "part-00002.parquet")
        assert t.num_rows == s["rows"] == s["tokens"] // 16 and len(s["tail"]) == s["tokens"] % 16
        assert hashlib.sha256((tmp_path / "out" / name / "part-00002.parquet").read_bytes()).hexdigest() == s["sha256"]
    counts = np.frombuffer((tmp_path / "counts").read_bytes(), dtype=np.int64)
    assert counts.sum() == tr["rows"] * 16 and counts[entry["eos_token_id"]] > 0

    # The document index: every kept document once, in its split, with its tokens and language score.
    seen = []
    for name, s in (("train", tr), ("val", va)):
        f = tmp_path / "out" / "documents" / f"{name}-00002.parquet"
        idx = pq.read_table(f).to_pydict()
        assert s["document_index"] == {"documents": s["documents"], "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
        assert sum(idx["tokens"]) == s["tokens"] and idx["key"] == sorted(idx["key"])
        for k, n, lang, sc in zip(idx["key"], idx["tokens"], idx["lang"], idx["lang_score"]):
            i = keys.index(k)
            assert n == len(tok.encode(texts[i], add_special_tokens=False).ids) + 1
            assert (lang, round(sc, 4)) == (langs[i], round(scores[i], 4))
        seen += idx["key"]
    assert sorted(seen) == keys[:40]


def test_encode_stream_puts_eos_after_each_document(tok_json):
    from rayworks.data.tokenizer import backend

    d, entry = tok_json
    tok = backend((d / "tokenizer.json").read_bytes())
    ids = encode_stream(tok, ["hello", "says"], 0)
    assert ids.dtype == np.int32 and (ids == 0).sum() == 2 and ids[-1] == 0


def test_encode_batches_keep_order_and_bounds_and_do_not_change_the_ids(tok_json, monkeypatch):
    from rayworks.data import pack
    from rayworks.data.tokenizer import backend

    d, _ = tok_json
    tj = (d / "tokenizer.json").read_bytes()
    texts = [f"document number {i} says hello " * (1 + i % 7) for i in range(50)] + ["x" * 500]
    whole = encode_stream(backend(tj), texts, 0)
    monkeypatch.setattr(pack, "ENCODE_CHARS", 200)
    monkeypatch.setattr(pack, "ENCODE_BATCH", 4)
    batches = list(pack._batches(texts))
    assert [t for b in batches for t in b] == texts and len(batches) > len(texts) // 4
    assert all(len(b) <= 4 and (len(b) == 1 or sum(map(len, b)) <= 200) for b in batches)
    assert batches[-1] == ["x" * 500]  # longer than the budget: goes alone
    lengths: list[int] = []
    assert np.array_equal(encode_stream(backend(tj), texts, 0, lengths), whole) and sum(lengths) == len(whole)


def test_a_worker_builds_one_tokenizer_per_tokenizer_json(tok_json):
    from rayworks.data.tokenizer import backend

    d, _ = tok_json
    tj = (d / "tokenizer.json").read_bytes()
    assert backend(bytes(bytearray(tj))) is backend(bytes(bytearray(tj)))  # each unit brings its own copy
    other = tj.replace(b'"<|pad|>"', b'"<|pad2|>"')
    assert backend(other) is not backend(tj)


def test_entropy_of_uniform_and_degenerate():
    assert entropy_nats(np.array([5, 5, 5, 5])) == pytest.approx(np.log(4))
    assert entropy_nats(np.array([0, 7, 0])) == 0.0


# --- storage / manifest helpers -------------------------------------------------------------------

def test_atomic_write_and_manifest_helpers(tmp_path):
    from rayworks.data.manifest import read_manifest, shard_uris
    from rayworks.errors import ConfigError

    with pytest.raises(ConfigError, match="no prep manifest"):
        read_manifest(str(tmp_path))
    m = {"kind": "prep", "splits": {"train": {"shards": [{"name": "train/part-00000.parquet"}]},
                                    "val": {"shards": []}}}
    storage.write_json(str(tmp_path / "manifest.json"), m)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert read_manifest(str(tmp_path)) == m
    assert shard_uris(str(tmp_path / "manifest.json"), "train") == [f"{tmp_path}/train/part-00000.parquet"]
    assert shard_uris(str(tmp_path), "val") == []
    assert json.loads(storage.read_bytes(str(tmp_path / "manifest.json"))) == m
