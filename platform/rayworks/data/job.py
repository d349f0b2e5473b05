"""The prep job runner: plan -> clean -> dedup -> tokenizer -> pack -> manifest.

Each stage runs over work units and leaves one completion marker per unit under
``{output}/_work/`` (written atomically, after the unit's data), so a rerun of the
same config over the same inputs redoes only the units without a marker. The
manifest is written last; once it exists the output is complete and a rerun returns
at once. A build is one MLflow run (rayworks.tracking.jobrun: config, counts by drop
reason, throughput, the manifest; its id in the manifest's ``tracking``). Run it with ``python jobs/prep.py --config jobs/configs/prep.yaml`` or
``rayworks submit jobs/configs/prep.yaml``.
"""

from __future__ import annotations

import time

import numpy as np

from rayworks import artifacts, storage
from rayworks.config.base import config_hash
from rayworks.config.prep import PrepJob
from rayworks.data.curate import CURATION, count_curation, curation_counts
from rayworks.data.execute import Progress, count_drops, count_tokens, run_units
from rayworks.data.inputs import expand_inputs, plan_units
from rayworks.data.manifest import MANIFEST
from rayworks.errors import ConfigError, RayworksError
from rayworks.tracking import jobrun


class BadInputError(RayworksError):
    """An input file is corrupt and ``on_bad_file`` is ``fail``."""


def manifest_config(job: PrepJob) -> dict:
    """The resolved config as recorded in the manifest: everything but ``execution`` and ``tracking``."""
    cfg = job.model_dump(mode="json")
    cfg.pop("execution")
    cfg.pop("tracking")  # logging the run to MLflow or not changes no byte of the output
    return cfg


def _num_workers(job: PrepJob) -> int:
    if job.execution.num_workers:
        return job.execution.num_workers
    import ray

    return max(1, min(64, int(ray.cluster_resources().get("CPU", 1) // job.execution.num_cpus_per_worker)))


def _pending(markers: list[str]) -> list[int]:
    return [i for i, m in enumerate(markers) if not storage.exists(m)]


def run(job: PrepJob) -> dict:
    """Runs (or resumes) a prep job; returns the manifest."""
    t_start = time.time()
    files = expand_inputs(job.inputs)  # a missing path or empty glob fails here, before any work
    if job.tokenizer.path:
        from pathlib import Path

        if "://" in job.tokenizer.path or not (Path(job.tokenizer.path) / "tokenizer.json").is_file():
            raise ConfigError(f"tokenizer.path: {job.tokenizer.path} is not a local tokenizer directory with "
                              "tokenizer.json; unset it to train one")
    out = job.artifact_uri()
    artifacts.check_output_dir(job.output_uri or out, artifacts.storage_root(job), "output_uri", kind="prep")
    cfg = manifest_config(job)
    chash = config_hash(cfg)
    units = plan_units(files, max(1, int(job.unit_mb * 1e6)))
    print(f"[prep] {job.name}: {len(files)} input files, {sum(f['size_bytes'] for f in files) / 1e6:,.1f} MB, "
          f"{len(units)} units -> {out}", flush=True)

    from rayworks.rayinit import ensure_ray

    ensure_ray((job.execution.num_workers or 0) * job.execution.num_cpus_per_worker)
    workers, cpus = _num_workers(job), job.execution.num_cpus_per_worker
    storage.cleanup_temporaries(out)

    # Input hashes: for the manifest, and to tell a resumable run from a changed input.
    groups = [{"paths": sorted({files[p["file"]]["path"] for p in u["parts"]})} for u in units]
    shas: dict[str, str] = {}
    for r in run_units(_hash_files, groups, workers, cpus):
        shas.update(r)
    inputs = [{"role": "corpus", "path": f["path"], "size_bytes": f["size_bytes"], "sha256": shas[f["path"]]}
              for f in files]
    if job.decontam:  # the eval set decides what is dropped: a changed file must rebuild the output
        ev = job.decontam.path
        if not storage.is_file(ev):
            raise ConfigError(f"decontam.path: {ev} is not a file; give the evaluation set as a JSON Lines file")
        inputs.append({"role": "decontam", "path": ev, "size_bytes": storage.file_size(ev),
                       "sha256": storage.sha256_file(ev)})
    plan = {"config_hash": chash, "inputs": inputs, "num_units": len(units)}

    target = _target(out, chash, inputs)
    if target != artifacts.build_dir(out) and artifacts.discard_build(out):
        print(f"[prep] removed {artifacts.build_dir(out)}, left by an interrupted rebuild of another config",
              flush=True)
    if target is None:
        m = storage.read_json(storage.join(out, MANIFEST))
        print(f"[prep] {out} is already complete for this config and these inputs; nothing to do")
        _print_where(out, m)
        return m
    if target != out:
        artifacts.check_output_dir(target, None, "output_uri (its build folder)", kind="prep")
        storage.cleanup_temporaries(target)
    work = storage.join(target, "_work")
    if storage.exists(storage.join(work, "plan.json")) and storage.read_json(storage.join(work, "plan.json")) != plan:
        print("[prep] the config or inputs changed since the interrupted run; starting over", flush=True)
        _wipe(target)
    artifacts.mark(target, "prep")
    storage.write_json(storage.join(work, "plan.json"), plan)

    # The MLflow run of this build (a complete output made earlier keeps the run named in its manifest).
    tracker = jobrun.start(job.cluster_spec(), job, "prep", out)
    try:
        stats = _clean_stage(job, files, units, work, workers, cpus)
        _inspection_file(job, units, work, target)
        bucket_paths = _dedup_stage(job, units, work, workers, cpus)
        near_paths = _near_dup_stage(job, units, work, bucket_paths, workers, cpus)
        tok_entry, tok_json = _tokenizer_stage(job, units, work, target, stats, workers, cpus)
        packed = _pack_stage(job, units, work, target, bucket_paths, tok_entry, tok_json, workers, cpus, near_paths)
        manifest = _finalize(job, cfg, chash, inputs, stats, packed, tok_entry, units, work, target)
        manifest["tracking"] = jobrun.results(tracker, run_metrics(manifest, time.time() - t_start))
        storage.write_json(storage.join(target, MANIFEST), manifest)  # last: the output is complete
    except BaseException:
        jobrun.close(tracker, None, ok=False)
        raise
    if not job.keep_work:
        storage.delete_dir(work)
    if target != out:
        # The new output is complete: only now does it replace the old one (atomically on local disks).
        storage.publish_dir(target, out)
    jobrun.close(tracker, storage.join(out, MANIFEST))
    print(f"[prep] done in {time.time() - t_start:,.1f}s: {manifest['counts']['documents_kept']:,} documents, "
          f"{manifest['counts']['tokens']:,} tokens, {manifest['counts']['sequences']:,} sequences of {job.seq_len}")
    _print_where(out, manifest)
    return manifest


def run_metrics(manifest: dict, seconds: float) -> dict:
    """What prep logs to its MLflow run: the manifest's counts (drops by reason included) and this run's throughput."""
    c = manifest["counts"]
    return {**c, "seconds": seconds,
            **jobrun.rates(seconds, documents=c["documents_read"], tokens=c["tokens"], mb=c["bytes_read"] / 1e6)}


def _print_where(out: str, m: dict) -> None:
    n = {s: len(v["shards"]) for s, v in m["splits"].items()}
    print(f"[prep] output:   {out}  (train: {n.get('train', 0)} shards, val: {n.get('val', 0)} shards, tokenizer/)")
    print(f"[prep] manifest: {storage.join(out, MANIFEST)}", flush=True)


def _target(out: str, chash: str, inputs: list[dict]) -> str | None:
    """Where this run builds its output: None if ``out`` already is it (and its files still match
    their manifest's sizes), ``out`` itself when it holds no complete output, else a sibling build
    folder that replaces ``out`` once complete (so a failed or killed rebuild never costs the
    last good output)."""
    mpath = storage.join(out, MANIFEST)
    if not storage.is_file(mpath):
        return out
    try:
        m = artifacts.parse(storage.read_bytes(mpath), mpath)
    except artifacts.ManifestError:
        m = {}
    build = artifacts.build_dir(out)
    if m.get("config_hash") == chash and m.get("inputs") == inputs:
        problems = artifacts.verify_outputs(out, m, hashes=False)
        if not problems:
            return None
        print(f"[prep] {out} is complete for this config but its files do not match its manifest "
              f"({'; '.join(problems[:3])}); rebuilding it in {build}", flush=True)
        return build
    print(f"[prep] {out} holds the output of another config or other inputs; building the new one in {build} "
          "(the old output stays until it is complete)", flush=True)
    return build


def _wipe(out: str) -> None:
    """Removes what a prep run writes (and nothing else the folder may hold)."""
    storage.delete_file(storage.join(out, MANIFEST))  # first: the folder stops claiming to be complete
    for d in ("_work", "train", "val", "tokenizer"):
        storage.delete_dir(storage.join(out, d))


def _hash_files(paths: list[str]) -> dict[str, str]:
    return {p: storage.sha256_file(p) for p in paths}


def _clean_stage(job, files, units, work, workers, cpus) -> list[dict]:
    """Reads and cleans every unit; settles bad files (fail, or skip them everywhere)."""
    markers = [storage.join(work, "clean", f"u-{u['unit']:05d}.json") for u in units]
    unit_files = [{files[p["file"]]["path"] for p in u["parts"]} for u in units]
    clean_cfg = {**job.clean.model_dump(), **_curation_cfg(job, work)}
    for _round in range(3):  # a bad file found in one range of a big file re-runs its other ranges once
        done = {i: storage.read_json(m) for i, m in enumerate(markers) if storage.exists(m)}
        bad = {b["path"]: b["error"] for i in sorted(done) for b in done[i]["bad_files"]}
        if bad and job.on_bad_file == "fail":
            _fail_bad(bad)
        todo = [i for i in range(len(units)) if i not in done
                or set(done[i]["excluded"]) | {b["path"] for b in done[i]["bad_files"]} != unit_files[i] & set(bad)]
        if not todo:
            if _round == 0:
                Progress(job.name, "clean", len(units), len(units))
            return [done[i] for i in range(len(units))]
        prog = Progress(job.name, "clean", len(units), len(units) - len(todo))
        items = [{"unit": units[i], "excluded": sorted(unit_files[i] & set(bad)), "out_path":
                  storage.join(work, "clean", f"u-{i:05d}.parquet"), "marker": markers[i]} for i in todo]
        for r in run_units(_clean_and_mark, items, workers, cpus, files=files, clean_cfg=clean_cfg):
            prog.unit_done(docs=r["documents_read"], nbytes=r["bytes_read"])
            count_drops(job.name, r["dropped"])
            count_curation(job.name, r)
            if r["bad_files"] and job.on_bad_file == "fail":
                _fail_bad({b["path"]: b["error"] for b in r["bad_files"]})
            for b in r["bad_files"]:
                print(f"[prep] skipping bad input {b['path']}: {b['error']}", flush=True)
    raise RuntimeError("bad-file handling did not settle after 3 rounds")  # internal invariant


def _curation_cfg(job, work) -> dict:
    """The curation stages' settings for the clean tasks; the decontam n-grams are read here, once,
    and written to ``_work/`` for every task to load (see data/decontam.py)."""
    cfg = {k: (getattr(job, k).model_dump() if getattr(job, k) else None) for k in CURATION}
    if job.decontam:
        from rayworks.data import decontam

        table = storage.join(work, "decontam", "ngrams.npy")
        if not storage.exists(table):
            arr, st = decontam.eval_ngrams(job.decontam.path, job.decontam.text_fields, job.decontam.ngram)
            storage.write_bytes(table, decontam.to_npy(arr))
            storage.write_json(storage.join(work, "decontam", "eval.json"), st)
            print(f"[prep] decontam: {st['eval_ngrams']:,} {job.decontam.ngram}-grams from {st['eval_texts']:,} "
                  f"eval texts in {job.decontam.path}", flush=True)
        cfg["decontam_table"] = table
    return cfg


def _inspection_file(job, units, work, out) -> str | None:
    """Merges the units' dry-run records into one JSON Lines file, in key order (None: no dry run)."""
    if not any(c and c.dry_run for c in (job.quality, job.language, job.decontam)):
        return None
    from rayworks.data.clean import inspect_path

    path = (job.quality.inspection_path if job.quality else None) or storage.join(out, "inspection.jsonl")
    parts = [inspect_path(storage.join(work, "clean", f"u-{u['unit']:05d}.parquet")) for u in units]
    storage.write_bytes(path, b"".join(storage.read_bytes(p) for p in parts if storage.exists(p)))
    print(f"[prep] dry run: what the rules would drop is in {path}", flush=True)
    return path


def _clean_and_mark(unit, excluded, out_path, marker, files, clean_cfg) -> dict:
    from rayworks.data.clean import clean_unit

    r = clean_unit(unit, files, clean_cfg, excluded, out_path)
    storage.write_json(marker, r)
    return r


def _fail_bad(bad: dict[str, str]) -> None:
    lines = "; ".join(f"{p}: {e}" for p, e in sorted(bad.items()))
    raise BadInputError(f"corrupt input file(s): {lines}. Fix or remove them, or set on_bad_file: skip "
                        "to skip them (they are then listed in the manifest)")


def _dedup_stage(job, units, work, workers, cpus) -> list[str]:
    if not job.dedup:
        return []
    nb = max(1, min(64, len(units)))
    paths = [storage.join(work, "dedup", f"b-{b:03d}.parquet") for b in range(nb)]
    markers = [storage.join(work, "dedup", f"b-{b:03d}.json") for b in range(nb)]
    todo = _pending(markers)
    prog = Progress(job.name, "dedup", nb, nb - len(todo))
    unit_paths = [storage.join(work, "clean", f"u-{u['unit']:05d}.parquet") for u in units]
    items = [{"bucket": b, "num_buckets": nb, "unit_paths": unit_paths, "out_path": paths[b],
              "marker": markers[b]} for b in todo]
    for r in run_units(_dedup_and_mark, items, workers, cpus):
        prog.unit_done()
        count_drops(job.name, {"duplicate": r["duplicates"]})
    return paths


def _dedup_and_mark(bucket, num_buckets, unit_paths, out_path, marker) -> dict:
    from rayworks.data.dedup import dedup_bucket

    r = dedup_bucket(bucket, num_buckets, unit_paths, out_path)
    storage.write_json(marker, r)
    return r


def _near_dup_stage(job, units, work, dedup_paths, workers, cpus) -> list[str]:
    """MinHash-LSH near-duplicates (see data/neardup.py); returns the file listing the removed keys."""
    if not job.near_dup:
        return []
    from rayworks.data import neardup

    nd = storage.join(work, "neardup")
    final = storage.join(nd, "components.json")
    removed_path = storage.join(nd, "removed.parquet")
    if storage.exists(final):
        return [removed_path]
    cfg = job.near_dup.model_dump()
    parts = min(64, max(4, len(units)))  # any count gives the same result; it only bounds a bucket task
    docs = [storage.join(work, "clean", f"u-{u['unit']:05d}.parquet") for u in units]
    sigs = [storage.join(nd, "sig", f"u-{u['unit']:05d}.parquet") for u in units]
    marks = [storage.join(nd, "sig", f"u-{u['unit']:05d}.json") for u in units]
    todo = _pending(marks)
    prog = Progress(job.name, "neardup_sig", len(units), len(units) - len(todo))
    items = [{"unit": i, "docs_path": docs[i], "dedup_paths": dedup_paths, "cfg": cfg, "num_partitions": parts,
              "out_path": sigs[i], "marker": marks[i]} for i in todo]
    for r in run_units(_stage_and_mark, items, workers, cpus, fn_name="signature_unit"):
        prog.unit_done(docs=r["documents"])
    pairs = [storage.join(nd, "bucket", f"p-{p:03d}.parquet") for p in range(parts)]
    marks = [storage.join(nd, "bucket", f"p-{p:03d}.json") for p in range(parts)]
    todo = _pending(marks)
    prog = Progress(job.name, "neardup_bucket", parts, parts - len(todo))
    items = [{"partition": p, "sig_paths": sigs, "out_path": pairs[p], "marker": marks[p]} for p in todo]
    for _ in run_units(_stage_and_mark, items, workers, cpus, fn_name="bucket_partition"):
        prog.unit_done()
    candidates = sum(storage.read_json(m)["candidate_pairs"] for m in marks)
    if job.near_dup.verify:
        vpaths = [storage.join(nd, "verify", f"u-{u['unit']:05d}.parquet") for u in units]
        marks = [storage.join(nd, "verify", f"u-{u['unit']:05d}.json") for u in units]
        todo = _pending(marks)
        prog = Progress(job.name, "neardup_verify", len(units), len(units) - len(todo))
        items = [{"unit": i, "pair_paths": pairs, "docs_paths": docs, "cfg": cfg, "out_path": vpaths[i],
                  "marker": marks[i]} for i in todo]
        for _ in run_units(_stage_and_mark, items, workers, cpus, fn_name="verify_unit"):
            prog.unit_done()
        pairs = vpaths
    similar = neardup.read_pairs(pairs)  # the driver holds only the (verified) pairs: O(pairs) memory
    removed, clusters = neardup.components(similar)
    neardup.write_removed(removed, removed_path)
    count_drops(job.name, {"near_duplicate": int(len(removed))})
    storage.write_json(final, {"clusters": clusters, "documents_removed": int(len(removed)),
                               "candidate_pairs": int(candidates),
                               "similar_pairs": int(len(np.unique(similar, axis=0)) if len(similar) else 0)})
    print(f"[prep] near-dup: {len(removed):,} documents removed from {clusters:,} clusters "
          f"({candidates:,} candidate pairs)", flush=True)
    return [removed_path]


def _stage_and_mark(fn_name: str, marker: str, **kw) -> dict:
    from rayworks.data import neardup

    r = getattr(neardup, fn_name)(**kw)
    storage.write_json(marker, r)
    return r


def _tokenizer_stage(job, units, work, out, stats, workers, cpus) -> tuple[dict, bytes]:
    """Loads or trains the tokenizer once and saves it into the output."""
    from rayworks.data import tokenizer as tk

    marker = storage.join(work, "tokenizer.json")
    tok_dir = storage.join(out, "tokenizer")
    if not storage.exists(marker):
        tcfg = job.tokenizer.model_dump()
        if job.tokenizer.path:
            entry = _in_worker(tk.load_and_save, cpus, path=job.tokenizer.path, cfg=tcfg, out_uri=tok_dir)
        else:
            t0 = time.time()
            total_chars = sum(s["chars_kept"] for s in stats)
            threshold = min(1.0, job.tokenizer.sample_mb * 1e6 / max(total_chars, 1))
            items = [{"path": storage.join(work, "clean", f"u-{u['unit']:05d}.parquet")} for u in units]
            rows: dict[str, tuple[int, str]] = {}
            for r in run_units(_sample, items, workers, cpus, threshold=threshold, seed=job.seed):
                for key, h, text in r:  # copies share a hash: keep the first in input order
                    if h not in rows or key < rows[h][0]:
                        rows[h] = (key, text)
            sample = [t for _, t in sorted(rows.values())]
            if not sample:
                raise ConfigError("no documents survived cleaning, so there is nothing to train a tokenizer on; "
                                  "check the inputs and clean.min_chars/max_chars")
            print(f"[prep] training a {job.tokenizer.vocab_size}-token byte-level BPE on {len(sample):,} documents "
                  f"({sum(map(len, sample)) / 1e6:,.1f} M chars)", flush=True)
            import ray

            sample_ref = ray.put(sample)  # the worker reads it from the object store; the driver lets go
            del sample, rows
            entry = _in_worker(tk.train_and_save, cpus, texts=sample_ref, cfg=tcfg, out_uri=tok_dir)
            print(f"[prep] tokenizer trained in {time.time() - t0:,.1f}s", flush=True)
        storage.write_json(marker, entry)
    entry = storage.read_json(marker)
    return entry, storage.read_bytes(storage.join(tok_dir, "tokenizer.json"))


def _in_worker(fn, cpus: float, **kwargs):
    """``fn(**kwargs)`` in a Ray worker process of its own, killed as soon as it returns.

    The tokenizer stage needs ``transformers`` (the saved tokenizer is a
    ``PreTrainedTokenizerFast`` directory), and its ``AutoTokenizer`` imports torch: about
    550 MiB that the driver would otherwise hold for the rest of the job, beside the pack
    workers. It runs in an actor that is killed right after: a task with ``max_calls=1``
    exits too, but through Python's own shutdown, and that worker was still there, with its
    550 MiB, for ~1.7 s into the pack stage (the 1 GB prep's memory peak). A ConfigError
    raised there is raised here as itself.
    """
    import ray
    from ray.exceptions import RayTaskError

    worker = ray.remote(_OneCall).options(num_cpus=cpus, max_restarts=0).remote()
    try:
        return ray.get(worker.run.remote(fn, **kwargs))  # top-level refs (the sample) arrive resolved
    except RayTaskError as e:
        if isinstance(e.cause, ConfigError):
            raise e.cause from None
        raise
    finally:
        ray.kill(worker, no_restart=True)


class _OneCall:
    """The actor ``_in_worker`` runs its one call in."""

    def run(self, fn, **kwargs):
        return fn(**kwargs)


def _sample(path: str, threshold: float, seed: int) -> list:
    from rayworks.data.clean import sample_unit

    return [[k, h.hex(), t] for k, h, t in sample_unit(path, threshold, seed)]


def _pack_stage(job, units, work, out, bucket_paths, tok, tok_json, workers, cpus, near_paths=()) -> list[dict]:
    markers = [storage.join(work, "pack", f"u-{u['unit']:05d}.json") for u in units]
    todo = _pending(markers)
    prog = Progress(job.name, "pack", len(units), len(units) - len(todo))
    items = [{"unit": i, "docs_path": storage.join(work, "clean", f"u-{i:05d}.parquet"),
              "counts_path": storage.join(work, "pack", f"u-{i:05d}.counts"), "marker": markers[i]} for i in todo]
    for r in run_units(_pack_and_mark, items, workers, cpus, bucket_paths=bucket_paths,
                       near_dup_paths=list(near_paths), tokenizer_json=tok_json,
                       eos_id=tok["eos_token_id"], vocab_size=tok["vocab_size"], seq_len=job.seq_len,
                       val_fraction=job.val_fraction, seed=job.seed, out_uri=out):
        sp = r["splits"]
        prog.unit_done(docs=sum(s["documents"] for s in sp.values()), tokens=sum(s["tokens"] for s in sp.values()))
        for name, s in sp.items():
            count_tokens(job.name, name, s["tokens"], s["rows"])
    return [storage.read_json(m) for m in markers]


def _pack_and_mark(unit, docs_path, counts_path, marker, **kw) -> dict:
    from rayworks.data.pack import pack_unit

    r = pack_unit(unit, docs_path, counts_path=counts_path, **kw)
    storage.write_json(marker, r)
    return r


def _finalize(job, cfg, chash, inputs, stats, packed, tok, units, work, out) -> dict:
    """Packs the units' tails into the last shard; returns the manifest (the caller writes it, last)."""
    from rayworks.data.pack import SPLITS, entropy_nats, write_shard

    seq_len = job.seq_len
    counts = np.zeros(tok["vocab_size"], dtype=np.int64)
    for u in units:
        counts += np.frombuffer(storage.read_bytes(storage.join(work, "pack", f"u-{u['unit']:05d}.counts")),
                                dtype=np.int64)
    splits, remainder = {}, {}
    for split in SPLITS:
        shards = [{"name": f"{split}/part-{p['unit']:05d}.parquet", "rows": p["splits"][split]["rows"],
                   "sha256": p["splits"][split]["sha256"]} for p in packed if p["splits"][split]["rows"]]
        tail = np.array([t for p in packed for t in p["splits"][split]["tail"]], dtype=np.int32)
        n = len(tail) // seq_len
        if n:
            name = f"{split}/part-{len(units):05d}.parquet"
            shards.append({"name": name, **write_shard(storage.join(out, name), tail[: n * seq_len], seq_len)})
            if split == "train":
                counts += np.bincount(tail[: n * seq_len], minlength=len(counts))[: len(counts)]
            count_tokens(job.name, split, 0, n)
        remainder[split] = int(len(tail) - n * seq_len)
        rows = sum(s["rows"] for s in shards)
        splits[split] = {"shards": shards, "num_sequences": rows, "num_tokens": rows * seq_len,
                         "documents": sum(p["splits"][split]["documents"] for p in packed)}
        if rows == 0 and (split == "train" or job.val_fraction > 0):
            print(f"[prep] warning: the {split} split has no full sequence of {seq_len} tokens; add data, "
                  f"lower seq_len or {'raise' if split == 'val' else 'lower'} val_fraction", flush=True)
    dropped: dict[str, int] = {}
    for s in stats:
        for k, v in s["dropped"].items():
            dropped[k] = dropped.get(k, 0) + v
    skipped: dict[str, str] = {}
    for s in stats:
        for b in s["bad_files"]:
            skipped.setdefault(b["path"], b["error"])
    duplicates = sum(p["duplicates_dropped"] for p in packed)
    tokens = sum(p["splits"][s]["tokens"] for p in packed for s in SPLITS)
    counts_out = {
        "documents_read": sum(s["documents_read"] for s in stats),
        "documents_kept": sum(splits[s]["documents"] for s in SPLITS),
        "dropped": dict(sorted(dropped.items())),
        "duplicates": duplicates,
        "replaced_undecodable": sum(s["replaced_undecodable"] for s in stats),
        "bytes_read": sum(s["bytes_read"] for s in stats),
        "tokens": tokens,
        "tokens_dropped_remainder": sum(remainder.values()),
        "sequences": sum(splits[s]["num_sequences"] for s in SPLITS),
    }
    counts_out.update(curation_counts(job, stats, work))
    near_dup = storage.read_json(storage.join(work, "neardup", "components.json")) if job.near_dup else None
    if near_dup:
        counts_out["near_duplicates"] = near_dup["documents_removed"]
    manifest = artifacts.build(
        "prep", job.name, chash, inputs, artifacts.describe_files(out, skip=("_work",)), artifacts.versions("prep"),
        config=cfg, counts=counts_out, seq_len=seq_len,
        tokenizer={k: tok[k] for k in ("dir", "sha256", "vocab_size", "eos_token_id", "pad_token_id",
                                       "eos_token", "pad_token", "files")},
        splits=splits, num_units=len(units),
        unigram_entropy_nats=round(entropy_nats(counts), 12),
        skipped_files=[{"path": p, "error": e} for p, e in sorted(skipped.items())],
        **({"near_dup": {**near_dup, "parameters": job.near_dup.model_dump()}} if near_dup else {}),
    )
    return manifest
