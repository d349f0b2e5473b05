"""Generate job: config validation, prompt vetting and the chunked, resumable layout (no Ray, no vLLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rayworks.config.jobs import load_job, load_job_data
from rayworks.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


class FakeTokenizer:
    """Whitespace 'tokenizer' with a chat template, enough to vet prompts."""

    def __call__(self, texts, add_special_tokens=True):
        return {"input_ids": [[1] * add_special_tokens + [7] * len(t.split()) for t in texts]}

    def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=True):
        return "".join(f"<|{m['role']}|> {m['content']} " for m in msgs) + ("<|assistant|>" if add_generation_prompt else "")


def job_data(tmp_path: Path, **over) -> dict:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    prompts = tmp_path / "p.jsonl"
    if not prompts.exists():
        prompts.write_text('{"prompt": "hello"}\n')
    d = {"kind": "generate", "name": "g", "model": "model", "input": {"path": "p.jsonl"},
         "output": {"uri": str(tmp_path / "out"), "num_rows_per_chunk": 2},
         "engine": {"max_model_len": 16}, "sampling": {"max_tokens": 4}}
    d.update(over)
    return d


def make(tmp_path, **over):
    return load_job_data(job_data(tmp_path, **over), "test", tmp_path)


def test_example_config_validates():
    job = load_job(REPO / "jobs" / "configs" / "generate.yaml")
    assert job.kind == "generate" and job.engine.device == "cpu"
    assert job.input.path.endswith("jobs/configs/generate_prompts.jsonl")
    req = job.resource_request()
    assert req[1].count == job.engine.num_replicas and req[1].num_gpus == 0


def test_strict_and_cross_field_checks(tmp_path):
    with pytest.raises(ConfigError, match="unknown key"):
        make(tmp_path, engine={"num_replica": 2})
    with pytest.raises(ConfigError, match="max_tokens"):
        make(tmp_path, sampling={"max_tokens": 16})
    with pytest.raises(ConfigError, match="device: gpu"):
        make(tmp_path, engine={"tensor_parallel_size": 2})
    gpu = make(tmp_path, engine={"device": "gpu", "backend": "ray_data_llm", "tensor_parallel_size": 2,
                                 "num_replicas": 3})
    assert [(b.num_gpus, b.count) for b in gpu.resource_request()] == [(0, 1), (2, 3)]
    # backend llm holds one vllm.LLM per Ray Data actor: no placement group for tensor-parallel workers,
    # and no engine metrics on Ray's Prometheus; both refusals name the fix.
    with pytest.raises(ConfigError, match="tensor_parallel_size > 1 needs engine.backend: ray_data_llm"):
        make(tmp_path, engine={"device": "gpu", "tensor_parallel_size": 2})
    with pytest.raises(ConfigError, match="log_engine_metrics needs engine.backend: ray_data_llm"):
        make(tmp_path, engine={"log_engine_metrics": True})
    with pytest.raises(ConfigError, match="backend"):
        make(tmp_path, engine={"backend": "hf"})


def test_missing_model_or_input_fails_before_any_engine(tmp_path):
    from rayworks.generate.preflight import check_paths

    job = make(tmp_path)
    check_paths(job)  # both exist
    job.model = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match="model: .*nope"):
        check_paths(job)
    job = make(tmp_path)
    job.input.path = str(tmp_path / "missing.jsonl")
    with pytest.raises(ConfigError, match="input.path"):
        check_paths(job)


def test_vet_sorts_bad_rows_into_errors(tmp_path):
    from rayworks.generate.prompts import read_rows, vet

    lines = [{"prompt": "a b c"}, {"text": "no prompt"}, {"prompt": "w " * 20},
             {"prompt": "x", "sampling": {"max_tokens": 2, "stop": ["."]}}, {"prompt": "y", "sampling": {"n": 5}},
             {"prompt": ""}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    job = make(tmp_path)
    rows, files, shas = read_rows(job)
    assert len(rows) == 7 and len(shas) == 1
    p = vet(job, rows, FakeTokenizer())
    assert [g["index"] for g in p.good] == [0, 3]
    reasons = {e["index"]: e["reason"] for e in p.errors}
    assert set(reasons) == {1, 2, 4, 5, 6}
    assert "missing prompt field 'prompt'" in reasons[1]
    assert "21 tokens" in reasons[2] and "max_model_len" in reasons[2]
    assert "unknown keys ['n']" in reasons[4]
    assert "not valid JSON" in reasons[6]
    codes = {e["index"]: e["error"] for e in p.errors}
    assert codes == {1: "missing_prompt", 2: "too_long", 4: "bad_sampling", 5: "missing_prompt", 6: "bad_json"}
    row = p.good[1]
    assert json.loads(row["sampling"])["stop"] == ["."] and json.loads(row["sampling"])["max_tokens"] == 2
    assert row["budget"] == 2 and p.good[0]["budget"] == 4


def test_chat_template_and_ids(tmp_path):
    from rayworks.generate.prompts import vet

    job = make(tmp_path, chat_template=True, system_prompt="be brief", input={"path": "p.jsonl", "id_field": "k"})
    p = vet(job, [{"k": "a", "prompt": "hi"}, {"k": "a", "prompt": "dup"}, {"prompt": "no id"}], FakeTokenizer())
    assert [g["id"] for g in p.good] == ["a"]
    assert len(p.good[0]["token_ids"]) == len("<|system|> be brief <|user|> hi <|assistant|>".split())
    assert sorted(e["reason"] for e in p.errors) == ["duplicate prompt id 'a'", "missing id field 'k'"]


def test_text_and_parquet_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayworks.generate.prompts import read_rows

    (tmp_path / "p.txt").write_text("one\n\ntwo\nthree\n")
    job = make(tmp_path, input={"path": "p.txt"})
    assert [r["prompt"] for r in read_rows(job)[0]] == ["one", "two", "three"]
    d = tmp_path / "pq"
    d.mkdir()
    pq.write_table(pa.table({"q": ["a", "b"]}), d / "0.parquet")
    pq.write_table(pa.table({"q": ["c"]}), d / "1.parquet")
    job = make(tmp_path, input={"path": "pq", "prompt_field": "q", "num_rows_limit": 2})
    rows, files, _ = read_rows(job)
    assert [r["q"] for r in rows] == ["a", "b"] and len(files) == 1


def test_chunks_commit_resume_and_assemble(tmp_path):
    from rayworks.generate import chunks

    job = make(tmp_path, output={"uri": str(tmp_path / "out"), "num_rows_per_chunk": 2, "format": "jsonl"})
    out = job.artifact_uri()
    chunks.check_plan(job, out, ["abc"], "m1")
    chunks.check_plan(job, out, ["abc"], "m1")  # same plan: resumes
    with pytest.raises(ConfigError, match="different input_sha256"):
        chunks.check_plan(job, out, ["changed"], "m1")
    # The model counts by content, not path: the same path holding another model is refused.
    with pytest.raises(ConfigError, match=r"different model \(earlier: .* sha256 m1; now: .* sha256 m2\).*"
                                          r"output.overwrite: true to start fresh"):
        chunks.check_plan(job, out, ["abc"], "m2")

    def row(i, run):
        return {"index": i, "id": str(i), "prompt": f"p{i}", "generated_text": f"g{i}", "finish_reason": "length",
                "num_prompt_tokens": 2, "num_output_tokens": 4, "run_id": run}

    chunks.write_chunk(out, 1, [row(3, "r1"), row(2, "r1")])
    (tmp_path / "out" / "chunks" / ".tmp-dead-chunk-000000.parquet").write_bytes(b"partial")  # a killed writer
    assert chunks.committed(out) == {1}
    with pytest.raises(RuntimeError, match="exactly once"):
        chunks.assemble(job, out, [0, 1, 2, 3])
    chunks.write_chunk(out, 0, [row(0, "r2"), row(1, "r2")])
    path, table = chunks.assemble(job, out, [0, 1, 2, 3])
    lines = [json.loads(x) for x in Path(path).read_text().splitlines()]
    assert [x["id"] for x in lines] == ["0", "1", "2", "3"]
    assert set(lines[0]) == set(chunks.OUTPUT_COLUMNS)
    assert table.column("run_id").to_pylist() == ["r2", "r2", "r1", "r1"]
    assert len(list((tmp_path / "out" / "chunks").glob(".tmp-*"))) == 1  # only the planted one


def test_engine_config_cpu_bundle_is_explicit(tmp_path):
    # ray.data.llm is a required dependency (the generate job's engine): missing is a failure, not a skip.
    from rayworks.generate import engine

    job = make(tmp_path, engine={"max_model_len": 64, "num_cpus_per_replica": 2, "num_replicas": 2, "batch_size": 16})
    cfg = engine.processor_config(job)
    assert [(b["CPU"], b.get("GPU", 0)) for b in cfg.placement_group_config["bundles"]] == [(2, 0)]
    assert tuple(cfg.concurrency) == (2, 2) and cfg.batch_size == 16
    assert cfg.engine_kwargs["max_model_len"] == 64 and "enable_chunked_prefill" not in cfg.engine_kwargs
    assert engine.processor_config(job, seeded=True).engine_kwargs["enable_chunked_prefill"] is False
    assert cfg.runtime_env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1"
    row = {"index": 3, "prompt": "p", "token_ids": [1, 2], "sampling": json.dumps({"max_tokens": 4}), "budget": 4}
    pre = engine._preprocess(row)
    assert pre["tokenized_prompt"] == [1, 2] and pre["sampling_params"]["max_tokens"] == 4
    from vllm import SamplingParams

    SamplingParams(**pre["sampling_params"])  # what the engine stage builds from the row
    out = engine._postprocess({"index": 3, "generated_text": "x", "num_generated_tokens": 4, "num_input_tokens": 2,
                               "budget": 4, "generated_tokens": [5, 6, 7, 8], "time_taken_llm": 1.5})
    assert out["finish_reason"] == "length" and out["num_output_tokens"] == 4 and out["arrival_ts"] > 0
    assert engine._postprocess({**out, "generated_text": "", "num_generated_tokens": 2, "num_input_tokens": 2,
                                "budget": 4, "time_taken_llm": 0.1})["finish_reason"] == "stop"


def test_llm_backend_stage_and_sampling(tmp_path):
    """Backend llm: one actor per replica on its CPUs, unbound threads, batch_size x max_concurrent_batches
    prompts per LLM.generate call, and each row's sampling capped at its budget."""
    from rayworks.generate import engine

    job = make(tmp_path, engine={"max_model_len": 64, "num_cpus_per_replica": 2, "num_replicas": 2, "batch_size": 16,
                                 "max_concurrent_batches": 4})
    assert job.engine.backend == "llm" and job.engine.prompts_per_call == 64
    env = engine.engine_env(job)
    # The engine core in the actor's process (no scheduler process): a math thread per reserved CPU
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind" and env["OMP_NUM_THREADS"] == "2"
    assert env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    one = make(tmp_path, engine={"num_cpus_per_replica": 1})
    assert engine.engine_env(one)["OMP_NUM_THREADS"] == "1"
    # a user's runtime_env still wins
    job2 = make(tmp_path, runtime_env={"env_vars": {"VLLM_CPU_OMP_THREADS_BIND": "0-1"}})
    assert engine.engine_env(job2)["VLLM_CPU_OMP_THREADS_BIND"] == "0-1"
    rd = make(tmp_path, engine={"backend": "ray_data_llm"})
    rd_env = engine.engine_env(rd)  # ray.data.llm runs vLLM's async engine: its own processes, its own binding
    assert "VLLM_CPU_OMP_THREADS_BIND" not in rd_env and "VLLM_ENABLE_V1_MULTIPROCESSING" not in rd_env
    assert rd_env["OMP_NUM_THREADS"] == "2"

    class Captured:
        def __init__(self):
            self.args = None

        def map_batches(self, fn, **kw):
            self.args = (fn, kw)
            return self

    ds = Captured()
    assert engine.generate_stage(job, ds, seeded=True) is ds
    fn, kw = ds.args
    assert fn is engine.BatchGenerator and kw["batch_size"] == 64 and kw["concurrency"] == 2
    assert kw["num_cpus"] == 2 and kw["runtime_env"]["env_vars"]["OMP_NUM_THREADS"] == "2"
    assert kw["fn_constructor_kwargs"]["engine_kwargs"]["enable_chunked_prefill"] is False  # seeded on CPU

    gen = engine.BatchGenerator.__new__(engine.BatchGenerator)  # no engine: the sampling cache only
    gen._params = {}
    s = json.dumps({"temperature": 0.7, "top_p": 0.95, "top_k": 0, "max_tokens": 50, "min_tokens": 0,
                    "stop": [], "seed": 3}, sort_keys=True)
    sp = gen.sampling_params(s, 12)
    assert sp.max_tokens == 12 and sp.seed == 3 and gen.sampling_params(s, 12) is sp
    assert gen.sampling_params(s, 50).max_tokens == 50 and len(gen._params) == 2
