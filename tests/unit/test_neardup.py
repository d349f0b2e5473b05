"""Near-duplicate removal (no Ray): shingles, signatures, LSH pairs, components, and precision/recall
on planted near-duplicates in a real corpus."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from rayworks import storage
from rayworks.config.prep import NearDupConfig
from rayworks.data import minhash as mh
from rayworks.data import neardup as nd
from rayworks.data.clean import unit_key
from tests.neardup_corpus import paragraphs, planted

CFG = NearDupConfig().model_dump()


def test_word_shingles_ignore_case_and_punctuation_but_not_order():
    s = mh.shingles("The quick brown fox jumps over", "word", 3, 1)
    assert len(s) == 4 and np.all(np.diff(s.astype(np.float64)) > 0)  # sorted, unique
    assert np.array_equal(s, mh.shingles("the QUICK, brown fox -- jumps over!", "word", 3, 1))
    assert not np.array_equal(s, mh.shingles("quick The brown fox jumps over", "word", 3, 1))
    assert not np.array_equal(s, mh.shingles("The quick brown fox jumps over", "word", 3, 2))  # seed
    assert len(mh.shingles("two words", "word", 5, 1)) == 1  # shorter than a shingle: one shingle
    assert len(mh.shingles("  ...  ", "word", 5, 1)) == 0
    assert len(mh.shingles("aaaa", "char", 2, 1)) == 1
    assert np.array_equal(mh.shingles("ab  C\n d", "char", 3, 1), mh.shingles("AB c d", "char", 3, 1))


def test_signatures_are_the_minimum_of_each_permutation_across_chunks(monkeypatch):
    a, b = mh.permutations(32, 7)
    assert np.all(a % np.uint64(2) == 1)
    a2, _ = mh.permutations(32, 8)
    assert not np.array_equal(a, a2)
    texts = paragraphs()[:40]
    sets = [mh.shingles(t, "char", 4, 7) for t in texts]
    sets = [s for s in sets if len(s)]
    monkeypatch.setattr(mh, "ROWS_PER_CHUNK", 257)  # documents straddle chunks, some span several
    got = mh.signatures(sets, a, b)
    want = np.stack([np.min(s[:, None] * a[None, :] + b[None, :], axis=0) for s in sets])
    assert np.array_equal(got, want)


def test_signature_agreement_estimates_jaccard():
    a, b = mh.permutations(256, 3)
    base = mh.shingles(" ".join(paragraphs(60)[:3]), "word", 5, 3)
    errs = []
    for keep in (0.9, 0.7, 0.5, 0.3):
        other = np.unique(np.concatenate([base[: int(len(base) * keep)], np.arange(50, dtype=np.uint64)]))
        sig = mh.signatures([base, other], a, b)
        errs.append(abs((sig[0] == sig[1]).mean() - mh.jaccard(base, other)))
    assert max(errs) < 0.1, errs  # sd of the estimate is at most 0.5/sqrt(256) = 0.031


def test_band_hashes_match_only_when_a_whole_band_matches():
    sig = np.arange(24, dtype=np.uint64).reshape(2, 12).copy()
    sig[1, :4] = sig[0, :4]  # band 0 equal, bands 1-2 differ in one row each
    sig[1, 4:8] = sig[0, 4:8]
    sig[1, 9] += 1
    bh = mh.band_hashes(sig, 3, 4)
    assert bh.shape == (2, 3)
    assert bh[0, 0] == bh[1, 0] and bh[0, 1] == bh[1, 1] and bh[0, 2] != bh[1, 2]
    same = np.zeros((1, 12), dtype=np.uint64)
    assert len(set(mh.band_hashes(same, 3, 4)[0].tolist())) == 3  # band index is part of the hash


def test_bucket_pairs_all_pairs_in_small_buckets_star_and_chain_in_big_ones():
    band = np.array([0, 0, 0, 1, 1, 0], dtype=np.int16)
    bh = np.array([5, 5, 5, 5, 9, 6], dtype=np.uint64)
    keys = np.array([30, 10, 20, 10, 30, 40], dtype=np.int64)
    assert nd.bucket_pairs(band, bh, keys).tolist() == [[10, 20], [10, 30], [20, 30]]
    g = nd.ALL_PAIRS_MAX + 3
    ks = np.arange(g, dtype=np.int64)[::-1].copy()
    pairs = nd.bucket_pairs(np.zeros(g, np.int16), np.zeros(g, np.uint64), ks)
    want = {(0, k) for k in range(1, g)} | {(k, k + 1) for k in range(1, g - 1)}
    assert set(map(tuple, pairs.tolist())) == want and len(pairs) == len(want)


def test_components_keep_the_smallest_key_of_each_cluster_whatever_the_order():
    pairs = np.array([[7, 9], [3, 7], [100, 200], [9, 12], [150, 200]], dtype=np.int64)
    for seed in range(5):
        p = pairs[np.random.default_rng(seed).permutation(len(pairs))]
        removed, clusters = nd.components(p)
        assert removed.tolist() == [7, 9, 12, 150, 200] and clusters == 2
    assert nd.components(np.zeros((0, 2), np.int64))[1] == 0


def _unit(tmp_path, unit: int, texts: list[str]) -> str:
    p = str(tmp_path / f"u-{unit:05d}.parquet")
    storage.write_bytes(p, storage.table_to_parquet_bytes(pa.table({
        "key": pa.array([unit_key(unit, i) for i in range(len(texts))], pa.int64()),
        "text": pa.array(texts, pa.large_string())})))
    return p


def test_stage_functions_across_units_skip_exact_duplicates_and_verify(tmp_path):
    base = paragraphs(60)[:4]
    rng = random.Random(0)
    from tests.neardup_corpus import make_variant

    close, _ = make_variant(base[0], 0.9, rng, CFG)
    far, j_far = make_variant(base[1], 0.6, rng, CFG)
    docs = [_unit(tmp_path, 0, [base[0], base[1], base[2]]), _unit(tmp_path, 1, [far, close, base[2], base[3]])]
    dedup = str(tmp_path / "dedup.parquet")
    nd.write_removed(np.array([unit_key(1, 2)]), dedup)  # unit 1's copy of base[2] is an exact duplicate
    sigs = [str(tmp_path / f"sig-{u}.parquet") for u in range(2)]
    info = [nd.signature_unit(u, docs[u], [dedup], CFG, 3, sigs[u]) for u in range(2)]
    assert [i["documents"] for i in info] == [3, 3]
    pair_paths = [str(tmp_path / f"p-{p}.parquet") for p in range(3)]
    for p in range(3):
        nd.bucket_partition(p, sigs, pair_paths[p])
    cand = {tuple(x) for x in nd.read_pairs(pair_paths).tolist()}
    assert (unit_key(0, 0), unit_key(1, 1)) in cand
    assert not any(unit_key(1, 2) in x for x in cand)
    v = nd.verify_unit(1, pair_paths, docs, CFG, str(tmp_path / "v1.parquet"))
    nd.verify_unit(0, pair_paths, docs, CFG, str(tmp_path / "v0.parquet"))
    verified = nd.read_pairs([str(tmp_path / "v0.parquet"), str(tmp_path / "v1.parquet")])
    assert v["verified_pairs"] <= v["candidate_pairs"]
    assert verified.tolist() == [[unit_key(0, 0), unit_key(1, 1)]], j_far
    removed, clusters = nd.components(verified)
    assert removed.tolist() == [unit_key(1, 1)] and clusters == 1


def test_result_does_not_depend_on_the_partition_count():
    texts, _ = planted(CFG, per_level=8)
    got = [nd.find_near_duplicates(texts, CFG, num_partitions=n)[:2] for n in (1, 5)]
    assert np.array_equal(got[0][0], got[1][0]) and got[0][1] == got[1][1] and len(got[0][0]) >= 16


@pytest.fixture(scope="module")
def planted_run():
    texts, pairs = planted(CFG, per_level=40)
    removed, clusters, stats = nd.find_near_duplicates(texts, CFG)
    return pairs, set(removed.tolist()), stats


def test_planted_near_duplicates_precision_and_recall(planted_run):
    pairs, removed, stats = planted_run
    for lv in (0.95, 0.85, 0.7, 0.5):  # the planting hit its levels
        js = [p["jaccard"] for p in pairs if p["level"] == lv]
        assert len(js) == 40 and abs(np.mean(js) - lv) < 0.02
    high = [p["variant"] in removed for p in pairs if p["jaccard"] >= 0.85]
    low = [p["variant"] in removed for p in pairs if p["jaccard"] <= 0.7]
    assert len(high) >= 40 and len(low) >= 60
    assert np.mean(high) >= 0.95, f"recall {np.mean(high):.3f} for J >= 0.85"
    assert np.mean(low) <= 0.01, f"{sum(low)} of {len(low)} pairs with J <= 0.7 removed"
    assert stats["verified_pairs"] < stats["candidate_pairs"]  # verification did reject candidates
    assert not any(p["base"] in removed for p in pairs)  # the first in input order stays


def test_without_verification_the_bands_alone_decide(planted_run):
    pairs, _, _ = planted_run
    texts, _ = planted(CFG, per_level=40)
    removed = set(nd.find_near_duplicates(texts, {**CFG, "verify": False})[0].tolist())
    at = {lv: np.mean([p["variant"] in removed for p in pairs if p["level"] == lv]) for lv in (0.95, 0.7, 0.5)}
    # 16 bands x 8 rows: P(candidate) = 1 - (1 - J^8)^16 = 1.0, 0.61 and 0.06 at these levels
    assert at[0.95] == 1.0 and 0.3 < at[0.7] < 0.9 and at[0.5] < 0.2, at


def test_config_validates_bands_times_rows():
    from pydantic import ValidationError

    from rayworks.config.prep import PrepJob

    with pytest.raises(ValidationError, match=r"bands \* rows \(10 \* 8 = 80\) must equal num_perm \(128\)"):
        NearDupConfig(bands=10)
    with pytest.raises(ValidationError, match="extra"):
        NearDupConfig(permutations=4)
    job = PrepJob(name="x", inputs=[{"path": "a.txt"}], near_dup={"shingle": "char", "num_perm": 64, "bands": 8})
    assert job.near_dup.rows == 8 and PrepJob(name="x", inputs=[{"path": "a.txt"}]).near_dup is None


def test_verify_finds_texts_by_key_when_curation_left_gaps(tmp_path):
    """Curation drops documents after their keys are given (keys 0, 3, 7 ... with gaps): the
    verify step must read the text of each key, not the row at the key's low bits."""
    import pyarrow as pa

    from rayworks import storage
    from rayworks.data.clean import unit_key
    from rayworks.data.neardup import _texts

    docs = tmp_path / "u-00000.parquet"
    keys = [unit_key(0, i) for i in (0, 3, 7, 8)]
    storage.write_bytes(str(docs), storage.table_to_parquet_bytes(pa.table({
        "key": pa.array(keys, pa.int64()), "text": pa.array(["a", "b", "c", "d"], pa.large_string())})))
    assert _texts(str(docs), np.array([keys[3], keys[1]], dtype=np.int64)) == ["d", "b"]
    with pytest.raises(RuntimeError, match="not in"):
        _texts(str(docs), np.array([unit_key(0, 5)], dtype=np.int64))
