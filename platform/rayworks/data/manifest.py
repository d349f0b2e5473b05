"""The prep output's layout and manifest.json (the common artifact manifest, kind ``prep``).

Layout of a prep output (``{storage}/prep/{name}`` by default)::

    .rayworks                marker: the folder is rayworks's (written first)
    manifest.json            written last: its presence means the output is complete
    tokenizer/               PreTrainedTokenizerFast.save_pretrained output
    train/part-NNNNN.parquet input_ids: fixed_size_list<int32>[seq_len]
    val/part-NNNNN.parquet
    documents/{split}-NNNNN.parquet  per unit: key, tokens (+ lang, lang_score) of each document

Beside the common core (see :mod:`rayworks.artifacts`; ``outputs`` lists every shard and
tokenizer file with its sha256 and size) it records ``splits``, ``tokenizer``, ``seq_len``
and ``counts``. Training reads it through :mod:`rayworks.train.inputs`; these readers
serve tests and tools.
"""

from __future__ import annotations

from rayworks import artifacts, storage

MANIFEST = artifacts.MANIFEST


def manifest_path(uri: str) -> str:
    """The manifest's path for an output dir, or the path itself if it names the manifest."""
    uri = uri.rstrip("/")
    return uri if uri.endswith(".json") else storage.join(uri, MANIFEST)


def read_manifest(uri: str) -> dict:
    """Reads a prep manifest from an output dir/URI or the manifest file itself."""
    from rayworks.errors import ConfigError

    p = manifest_path(uri)
    if not storage.is_file(p):
        raise ConfigError(f"no prep manifest at {p}; run the prep job first (rayworks submit jobs/configs/prep.yaml)")
    m = artifacts.parse(storage.read_bytes(p), p)
    if m["kind"] != "prep":
        raise ConfigError(f"{p} is a {m['kind']!r} manifest, not a prep manifest")
    return m


def output_dir(manifest_uri: str) -> str:
    return storage.parent_of(manifest_path(manifest_uri))


def shard_uris(manifest_uri: str, split: str) -> list[str]:
    """Absolute paths/URIs of a split's shards, in order ("train" or "val")."""
    m = read_manifest(manifest_uri)
    if split not in m["splits"]:
        raise KeyError(f"split {split!r} not in manifest (has {sorted(m['splits'])})")
    base = output_dir(manifest_uri)
    return [storage.join(base, s["name"]) for s in m["splits"][split]["shards"]]


def tokenizer_dir(manifest_uri: str) -> str:
    """Where the manifest's tokenizer directory lies."""
    m = read_manifest(manifest_uri)
    return storage.join(output_dir(manifest_uri), m["tokenizer"]["dir"])


def document_index(manifest_uri: str, split: str):
    """A split's document index as one Arrow table (key, tokens[, lang, lang_score]), in packing order.

    The token counts include each document's end-of-text token; within a unit their running sum
    is the document's offset in that unit's token stream (see :mod:`rayworks.data.pack`).
    """
    import pyarrow as pa

    m = read_manifest(manifest_uri)
    base = output_dir(manifest_uri)
    prefix = f"documents/{split}-"
    names = sorted(f["path"] for f in m["outputs"] if f["path"].startswith(prefix))
    tables = [storage.read_parquet(storage.join(base, n)) for n in names]
    return pa.concat_tables(tables) if tables else pa.table({"key": pa.array([], pa.int64()),
                                                             "tokens": pa.array([], pa.int32())})
