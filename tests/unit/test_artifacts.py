"""The one artifact contract (rayworks.artifacts): manifest shape, verification, safe output folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rayworks import artifacts, storage
from rayworks.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _artifact(root: Path) -> tuple[Path, dict]:
    (root / "train").mkdir(parents=True)
    (root / "train" / "part-00000.parquet").write_bytes(b"shard-bytes")
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    artifacts.mark(str(root), "prep")
    m = artifacts.build("prep", "t", "abc", [{"role": "corpus", "path": "/x.jsonl", "sha256": "00"}],
                        artifacts.describe_files(str(root)), artifacts.versions(), seq_len=8)
    storage.write_json(str(root / "manifest.json"), m)
    return root, m


def test_build_describes_every_file_but_manifest_and_marker(tmp_path):
    root, m = _artifact(tmp_path / "a")
    assert [o["path"] for o in m["outputs"]] == ["tokenizer/tokenizer.json", "train/part-00000.parquet"]
    assert m["outputs"][1] == {"path": "train/part-00000.parquet", "size_bytes": 11,
                               "sha256": storage.sha256_bytes(b"shard-bytes")}
    assert m["versions"]["pyarrow"] and m["seq_len"] == 8
    assert artifacts.read(str(root)) == m
    with pytest.raises(ValueError):
        artifacts.build("prep", "t", None, [{"path": "x"}], [{"path": "f", "sha256": "0"}], {})  # no size


@pytest.mark.parametrize("data, needle", [
    (b'{"kind": "prep", "outputs": [', "invalid JSON"),
    (b"", "invalid JSON"),
    (b"[1, 2]", "no kind"),
    (b'{"kind": "prep", "outputs": [{"path": "a"}]}', "outputs.0.sha256"),
])
def test_parse_refuses_truncated_or_malformed_manifests(data, needle):
    with pytest.raises(artifacts.ManifestError, match=needle):
        artifacts.parse(data, "m.json")


def test_verify_outputs_names_each_changed_or_missing_file(tmp_path):
    root, m = _artifact(tmp_path / "a")
    assert artifacts.verify_outputs(str(root), m) == []
    shard = root / "train" / "part-00000.parquet"
    shard.write_bytes(b"shard-bytez")  # same size, one byte different
    assert artifacts.verify_outputs(str(root), m, hashes=False) == []  # sizes only: not seen
    assert artifacts.verify_outputs(str(root), m) == [f"{shard}: sha256 differs from the manifest's "
                                                      f"{m['outputs'][1]['sha256'][:12]}"]
    (root / "tokenizer" / "tokenizer.json").unlink()
    shard.write_bytes(b"short")
    probs = artifacts.verify_outputs(str(root), m, hashes=False)
    assert probs == [f"{root}/tokenizer/tokenizer.json: missing", f"{shard}: size 5 bytes, manifest says 11"]


def test_verify_before_use_hashes_on_first_use_and_sizes_after(tmp_path):
    root, m = _artifact(tmp_path / "a")
    record = str(tmp_path / "job" / "inputs_verified.json")
    artifacts.verify_before_use(str(root), record, "data.prep_uri")
    assert storage.read_json(record)["verified"] == [storage.sha256_file(str(root / "manifest.json"))]
    (root / "train" / "part-00000.parquet").write_bytes(b"shard-bytez")
    artifacts.verify_before_use(str(root), record)  # already hashed once: sizes only, which match
    os.unlink(record)
    with pytest.raises(ConfigError, match=r"data.prep_uri: .* does not match its manifest: .*part-00000.parquet"):
        artifacts.verify_before_use(str(root), record, "data.prep_uri")
    (root / "manifest.json").write_text('{"kind": "pr')
    with pytest.raises(ConfigError, match="invalid JSON"):
        artifacts.verify_before_use(str(root), record)


@pytest.mark.parametrize("where", ["/", "~", "home_parent", "repo", "storage"])
def test_output_dir_refuses_root_home_repo_and_storage_root(where, tmp_path):
    path = {"/": "/", "~": "~", "home_parent": os.path.dirname(os.path.expanduser("~")) or "/",
            "repo": str(REPO), "storage": str(tmp_path / "store")}[where]
    with pytest.raises(ConfigError, match="output.uri: .*(root|home|repository|holds it)"):
        artifacts.check_output_dir(path, str(tmp_path / "store"), "output.uri")


def test_output_dir_refuses_a_foreign_non_empty_folder_and_accepts_its_own(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not delete")
    with pytest.raises(ConfigError, match="rayworks did not create"):
        artifacts.check_output_dir(str(foreign), None)
    (tmp_path / "empty").mkdir()
    artifacts.check_output_dir(str(tmp_path / "empty"), None)
    artifacts.check_output_dir(str(tmp_path / "new" / "folder"), None)
    root, _ = _artifact(tmp_path / "ours")
    artifacts.check_output_dir(str(root), None)
    os.unlink(root / artifacts.MARKER)  # an output of an older version: its manifest marks it
    artifacts.check_output_dir(str(root), None)
    with pytest.raises(ConfigError, match="bucket root"):
        artifacts.check_output_dir("s3://bucket/", None)


def test_identity_is_the_manifest_hash_or_a_hash_of_the_files(tmp_path):
    root, _ = _artifact(tmp_path / "a")
    assert artifacts.identity(str(root)) == storage.sha256_file(str(root / "manifest.json"))
    plain = tmp_path / "hf"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"a": 1}))
    before = artifacts.identity(str(plain))
    (plain / "config.json").write_text(json.dumps({"a": 2}))
    assert artifacts.identity(str(plain)) != before


@pytest.mark.parametrize("claim", ["marker", "manifest"])
def test_output_dir_refuses_another_kind_of_artifact(tmp_path, claim):
    root, m = _artifact(tmp_path / "prep")  # a complete prep output
    if claim == "manifest":  # an older output: no marker, its manifest says the kind
        os.unlink(root / artifacts.MARKER)
    before = sorted(p.name for p in root.rglob("*"))
    with pytest.raises(ConfigError, match=r"output.uri: .* holds an artifact of kind 'prep'; a generate job will not"):
        artifacts.check_output_dir(str(root), None, "output.uri", kind="generate")
    artifacts.check_output_dir(str(root), None, "output_uri", kind="prep")  # its own kind: a rerun may replace it
    assert artifacts.kind_of(str(root)) == "prep" and sorted(p.name for p in root.rglob("*")) == before
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        artifacts.check_output_dir(str(tmp_path / "f"), None, "out", kind="export")


def test_versions_come_from_one_table_per_kind():
    assert set(artifacts.versions()) >= {"ray", "pyarrow"}
    assert "tokenizers" in artifacts.versions("prep") and "tokenizers" not in artifacts.versions("generate")
    assert "transformers" in artifacts.versions("export") and "torch" in artifacts.versions("train")


def test_discard_build_removes_only_a_marked_build_folder(tmp_path):
    out = tmp_path / "prep" / "p"
    build = Path(artifacts.build_dir(str(out)))
    assert build == tmp_path / "prep" / ".p.rwbuild"
    build.mkdir(parents=True)
    (build / "notes.txt").write_text("a user's folder that happens to have this name")
    assert artifacts.discard_build(str(out)) is False and (build / "notes.txt").exists()
    artifacts.mark(str(build), "prep")
    assert artifacts.discard_build(str(out)) is True and not build.exists()
    assert artifacts.discard_build(str(out)) is False


def test_ref_identity_equals_identity_without_hashing_twice(tmp_path):
    root, _ = _artifact(tmp_path / "a")
    plain = tmp_path / "hf"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    for folder in (root, plain):
        assert artifacts.ref_identity(artifacts.input_ref("model", str(folder))) == artifacts.identity(str(folder))


def test_a_foreign_folder_named_like_a_build_folder_is_neither_discarded_nor_used(tmp_path):
    out = tmp_path / "generate" / "g"
    build = Path(artifacts.build_dir(str(out)))
    build.mkdir(parents=True)
    (build / "mine.txt").write_text("keep")
    assert artifacts.discard_build(str(out)) is False
    with pytest.raises(ConfigError, match="did not create"):
        artifacts.check_output_dir(str(build), None, "output.uri (its build folder)", kind="generate")
    assert (build / "mine.txt").read_text() == "keep"
