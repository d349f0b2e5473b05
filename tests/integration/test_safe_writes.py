"""Reruns never cost the last good output: the prep job on the session's Ray cluster.

A rerun with another config over a complete output builds beside it and replaces it only
once complete; a rerun that fails midway leaves the old output byte for byte; a rerun of the
same config checks the output's sizes before calling it complete, and removes a build folder
no run will resume (unit-level byte-N failures of every writer are tests/unit/test_safe_writes.py's).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import prep_corpus

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def _job(d: dict):
    from rayworks.config.jobs import load_job_data

    return load_job_data(d, "test", REPO)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_failed_and_successful_reruns_over_a_good_prep_output(ray_on_cluster, tmp_path):
    from rayworks import artifacts
    from rayworks.data.job import BadInputError, run

    corpus = prep_corpus.build(tmp_path / "corpus", size_mb=0.2)
    out = tmp_path / "store" / "prep" / "safe"
    d = prep_corpus.job_dict(corpus, out)
    d["inputs"] = d["inputs"][:2]  # no bad file: the first run succeeds
    first = run(_job(d))
    good = _tree(out)
    assert artifacts.verify_outputs(str(out), first) == []

    # Another config that fails midway (a corrupt input with on_bad_file: fail): the old output stays.
    bad = prep_corpus.job_dict(corpus, out, on_bad_file="fail", seq_len=32)
    with pytest.raises(BadInputError, match="broken.jsonl"):
        run(_job(bad))
    assert _tree(out) == good

    # Another config that succeeds: it replaces the old output whole, and nothing is left beside it.
    d2 = {**d, "seq_len": 32}
    second = run(_job(d2))
    assert second["config_hash"] != first["config_hash"] and second["seq_len"] == 32
    assert artifacts.read(str(out)) == second and artifacts.verify_outputs(str(out), second) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["safe"]
    assert not (out / "_work").exists()

    # The same config over a damaged output: sizes are checked before "nothing to do", so it is rebuilt.
    shard = out / second["splits"]["train"]["shards"][0]["name"]
    shard.write_bytes(shard.read_bytes()[:-10])
    assert artifacts.verify_outputs(str(out), second, hashes=False)
    third = run(_job(d2))
    assert third["config_hash"] == second["config_hash"] and artifacts.verify_outputs(str(out), third) == []
    assert sorted(p.name for p in out.parent.iterdir()) == ["safe"]

    # A build folder left by an interrupted rebuild goes once no run will resume it; the output stays.
    stale = out.parent / ".safe.rwbuild"
    (stale / "_work").mkdir(parents=True)
    artifacts.mark(str(stale), "prep")
    good = _tree(out)
    assert run(_job(d2)) == third and _tree(out) == good
    assert sorted(p.name for p in out.parent.iterdir()) == ["safe"]
