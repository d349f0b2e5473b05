"""The prep output's manifest.json: what training reads, and how reruns know what is done.

Layout of a prep output (``{storage}/prep/{name}`` by default)::

    manifest.json            written last: its presence means the output is complete
    tokenizer/               PreTrainedTokenizerFast.save_pretrained output
    train/part-NNNNN.parquet input_ids: fixed_size_list<int32>[seq_len]
    val/part-NNNNN.parquet

Training uses :func:`read_manifest` and :func:`shard_uris`.
"""

from __future__ import annotations

from rayworks.data import storage

MANIFEST = "manifest.json"


def manifest_path(uri: str) -> str:
    """The manifest's path for an output dir, or the path itself if it names the manifest."""
    uri = uri.rstrip("/")
    return uri if uri.endswith(".json") else storage.join(uri, MANIFEST)


def read_manifest(uri: str) -> dict:
    """Reads a prep manifest from an output dir/URI or the manifest file itself."""
    from rayworks.errors import ConfigError

    p = manifest_path(uri)
    if not storage.exists(p):
        raise ConfigError(f"no prep manifest at {p}; run the prep job first (rayworks submit jobs/configs/prep.yaml)")
    m = storage.read_json(p)
    if m.get("kind") != "prep":
        raise ConfigError(f"{p} is a {m.get('kind')!r} manifest, not a prep manifest")
    return m


def output_dir(manifest_uri: str) -> str:
    p = manifest_path(manifest_uri)
    return p.rsplit("/", 1)[0]


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


def versions() -> dict:
    import pyarrow
    import ray
    import tokenizers

    import rayworks

    return {"ray": ray.__version__, "tokenizers": tokenizers.__version__, "pyarrow": pyarrow.__version__,
            "rayworks": getattr(rayworks, "__version__", "0.1.0")}
