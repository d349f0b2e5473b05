"""Train config: DeepSpeed batch arithmetic, precision, vocab and resource checks fail before submission."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rayworks.config.jobs import load_job, load_job_data
from rayworks.config.train import resolve_deepspeed
from rayworks.errors import ConfigError
from rayworks.client.preflight import preflight

REPO = Path(__file__).resolve().parents[2]


def write_manifest(d: Path, vocab_size: int = 512, seq_len: int = 64) -> Path:
    """A prep manifest alone: enough for every check that runs before submission."""
    d.mkdir(parents=True, exist_ok=True)
    split = {"shards": [{"name": "train/part-00000.parquet", "rows": 100, "sha256": "0"}],
             "num_sequences": 100, "num_tokens": 100 * seq_len}
    (d / "manifest.json").write_text(json.dumps({
        "kind": "prep", "config_hash": "x", "seq_len": seq_len,
        "tokenizer": {"dir": "tokenizer", "sha256": "0", "vocab_size": vocab_size, "eos_token_id": 0,
                      "pad_token_id": 1},
        "splits": {"train": split, "val": {**split, "shards": [{**split["shards"][0], "name": "val/p.parquet"}]}},
        "unigram_entropy_nats": 5.0}))
    return d


def job_dict(prep: Path, **over) -> dict:
    d = {"kind": "train", "name": "t", "data": {"prep_uri": str(prep)},
         "deepspeed": {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4,
                       "gradient_accumulation_steps": 2, "zero_optimization": {"stage": 2}},
         "scaling": {"num_workers": 2}, "run": {"num_steps": 10}}
    for k, v in over.items():
        d[k] = {**d.get(k, {}), **v} if isinstance(v, dict) else v
    return d


def load(d: dict):
    return load_job_data(d, "train.yaml", Path("/"))


def test_batch_arithmetic_names_the_numbers(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(job_dict(write_manifest(tmp_path), deepspeed={"train_batch_size": 24}))
    msg = str(e.value)
    assert "train_batch_size (24)" in msg and "train_micro_batch_size_per_gpu (4)" in msg
    assert "gradient_accumulation_steps (2)" in msg and "num_workers (2)" in msg and "= 16" in msg


def test_missing_batch_number_is_derived():
    ds = resolve_deepspeed({"train_batch_size": 32, "train_micro_batch_size_per_gpu": 4}, 2, False, 10)
    assert ds["gradient_accumulation_steps"] == 4
    ds = resolve_deepspeed({"train_micro_batch_size_per_gpu": "auto", "train_batch_size": 8,
                            "gradient_accumulation_steps": 2}, 2, False, 10)
    assert ds["train_micro_batch_size_per_gpu"] == 2
    with pytest.raises(ConfigError, match="not a multiple"):
        resolve_deepspeed({"train_batch_size": 10, "train_micro_batch_size_per_gpu": 4}, 2, False, 10)


def test_precision_and_adam_follow_the_device():
    cfg = {"train_batch_size": 8, "bf16": {"enabled": "auto"}, "optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}}
    cpu = resolve_deepspeed(cfg, 2, use_gpu=False, num_steps=10)
    gpu = resolve_deepspeed(cfg, 2, use_gpu=True, num_steps=10)
    assert cpu["bf16"]["enabled"] is False and cpu["optimizer"]["params"]["torch_adam"] is True
    assert gpu["bf16"]["enabled"] is True and gpu["optimizer"]["params"]["torch_adam"] is False
    with pytest.raises(ConfigError, match="bf16.enabled: true on CPU"):
        resolve_deepspeed({**cfg, "bf16": {"enabled": True}}, 2, False, 10)
    # ZeRO-1/2 on CPU (gloo, no reduce-scatter) reduce with one all-reduce unless the user says otherwise;
    # GPUs keep DeepSpeed's reduce-scatter, and stages 0 and 3 are left as written.
    for stage in (1, 2):
        z = {**cfg, "zero_optimization": {"stage": stage}}
        assert resolve_deepspeed(z, 2, False, 10)["zero_optimization"] == {"stage": stage, "reduce_scatter": False}
        assert resolve_deepspeed(z, 2, True, 10)["zero_optimization"] == {"stage": stage}
    mine = {**cfg, "zero_optimization": {"stage": 2, "reduce_scatter": True}}
    assert resolve_deepspeed(mine, 2, False, 10)["zero_optimization"]["reduce_scatter"] is True
    for stage in (0, 3):
        assert resolve_deepspeed({**cfg, "zero_optimization": {"stage": stage}}, 2, False, 10)["zero_optimization"] == {
            "stage": stage}


def test_deepspeed_sections_are_checked():
    base = {"train_batch_size": 8}
    with pytest.raises(ConfigError, match="stage"):
        resolve_deepspeed({**base, "zero_optimization": {"stage": 4}}, 2, False, 10)
    with pytest.raises(ConfigError, match="offload_param needs stage >= 3"):
        resolve_deepspeed({**base, "zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}, 2, True, 10)
    with pytest.raises(ConfigError, match="scheduler.type"):
        resolve_deepspeed({**base, "scheduler": {"type": "Cosine"}}, 2, False, 10)
    ds = resolve_deepspeed({**base, "scheduler": {"type": "WarmupDecayLR", "params": {"total_num_steps": "auto"}}},
                           2, False, 77)
    assert ds["scheduler"]["params"]["total_num_steps"] == 77


def test_vocab_mismatch_fails_preflight(tmp_path):
    from rayworks.config.cluster import load_cluster_spec

    prep = write_manifest(tmp_path / "prep", vocab_size=512)
    spec = load_cluster_spec()
    job = load(job_dict(prep, model={"preset": "tiny", "vocab_size": 1000}))
    with pytest.raises(ConfigError, match=r"model.vocab_size \(1000\) does not match .* vocab_size \(512\)"):
        preflight(job, spec)
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 256}))
    job = load(job_dict(prep, model={"init_from": str(hf)}))
    with pytest.raises(ConfigError, match="smaller than the prep tokenizer's 512"):
        preflight(job, spec)
    preflight(load(job_dict(prep)), spec)  # the preset takes the tokenizer's vocabulary


def test_missing_prep_output_and_split(tmp_path):
    from rayworks.config.cluster import load_cluster_spec

    spec = load_cluster_spec()
    with pytest.raises(ConfigError, match="no manifest.json"):
        preflight(load(job_dict(tmp_path / "nothing")), spec)
    with pytest.raises(ConfigError, match="split 'test' is not in"):
        preflight(load(job_dict(write_manifest(tmp_path / "p"), data={"prep_uri": str(tmp_path / "p"),
                                                                       "val_split": "test"})), spec)


def test_resources_fail_preflight(tmp_path):
    from rayworks.config.cluster import load_cluster_spec

    spec = load_cluster_spec()  # 8 CPUs, no GPU
    prep = write_manifest(tmp_path)
    ds = {"train_batch_size": 64, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1}
    with pytest.raises(ConfigError, match=r"train worker needs 16 x 1 CPU"):
        preflight(load(job_dict(prep, deepspeed=ds, scaling={"num_workers": 16})), spec)
    with pytest.raises(ConfigError, match="GPU"):
        preflight(load(job_dict(prep, scaling={"use_gpu": True, "accelerator_type": "H100"})), spec)
    with pytest.raises(ConfigError, match="resources_per_worker.TPU"):
        preflight(load(job_dict(prep, scaling={"resources_per_worker": {"TPU": 1}})), spec)


def test_steps_or_epochs():
    with pytest.raises(ConfigError, match="exactly one of num_steps or num_epochs"):
        load(job_dict(Path("/x"), run={"num_steps": 5, "num_epochs": 1.0}))


def test_example_config_loads():
    job = load_job(REPO / "jobs/configs/train.yaml")
    assert job.kind == "train" and job.data.prep_uri.startswith("/")


def test_cli_validate_exits_2_with_the_numbers(tmp_path):
    prep = write_manifest(tmp_path / "prep")
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(job_dict(prep, deepspeed={"train_batch_size": 20})))
    proc = subprocess.run([sys.executable, "-m", "rayworks.client.cli", "validate", str(cfg)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "train_batch_size (20)" in proc.stderr and "= 16" in proc.stderr
    cfg.write_text(yaml.safe_dump(job_dict(prep)))
    proc = subprocess.run([sys.executable, "-m", "rayworks.client.cli", "validate", str(cfg)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("key,value,path", [
    ("train_batch_size", "16", "deepspeed.train_batch_size"),
    ("train_micro_batch_size_per_gpu", True, "deepspeed.train_micro_batch_size_per_gpu"),
    ("gradient_clipping", "1.0", "deepspeed.gradient_clipping"),
    ("optimizer", {"type": "AdamW", "params": {"lr": "3e-3"}}, "deepspeed.optimizer.params.lr"),
    ("optimizer", {"type": "SGD"}, "deepspeed.optimizer"),
    ("optimizer", "AdamW", "deepspeed.optimizer"),
    ("zero_optimization", {"stage": True}, "deepspeed.zero_optimization.stage"),
    ("zero_optimization", {"stage": "2"}, "deepspeed.zero_optimization.stage"),
    ("zero_optimization", {"stage": 2, "offload_optimizer": {"device": "gpu"}},
     "deepspeed.zero_optimization.offload_optimizer.device"),
    ("bf16", {"enabled": "yes"}, "deepspeed.bf16.enabled"),
    ("scheduler", {"type": "WarmupLR", "params": {"warmup_num_steps": "auto"}}, "deepspeed.scheduler"),
])
def test_wrongly_typed_deepspeed_keys_name_their_path(tmp_path, key, value, path):
    d = job_dict(tmp_path, deepspeed={key: value})
    with pytest.raises(ConfigError) as e:
        load(d)
    assert f"{path}: " in str(e.value), str(e.value)
    with pytest.raises(ConfigError) as e:  # the same check when called directly
        resolve_deepspeed(d["deepspeed"], 2, False, 10)
    assert f"{path}: " in str(e.value), str(e.value)


def test_cli_validate_wrong_deepspeed_type_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump(job_dict(write_manifest(tmp_path / "prep"),
                                           deepspeed={"optimizer": {"type": "AdamW", "params": {"lr": "fast"}}})))
    proc = subprocess.run([sys.executable, "-m", "rayworks.client.cli", "validate", str(cfg)], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "deepspeed.optimizer.params.lr" in proc.stderr and "'fast'" in proc.stderr


def test_untyped_deepspeed_keys_pass_through_verbatim():
    written = {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
               "optimizer": {"type": "adamw", "params": {"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8}},
               "zero_optimization": {"stage": 3, "stage3_max_live_parameters": 1000, "overlap_comm": False},
               "communication_data_type": "fp32", "activation_checkpointing": {"partition_activations": True}}
    job = load(job_dict(Path("/x"), deepspeed=written))
    assert job.model_dump(mode="json")["deepspeed"] == written  # the config as written, no defaults added
    ds = resolve_deepspeed(written, 2, False, 10)
    assert ds["zero_optimization"] == written["zero_optimization"]
    assert ds["communication_data_type"] == "fp32" and ds["activation_checkpointing"] == {"partition_activations": True}
    assert ds["optimizer"]["params"] == {"lr": 1e-3, "betas": [0.9, 0.95], "eps": 1e-8, "torch_adam": True}


def test_run_resume_accepts_auto_and_never_only(tmp_path):
    assert load(job_dict(tmp_path)).run.resume == "auto"
    assert load(job_dict(tmp_path, run={"num_steps": 10, "resume": "never"})).run.resume == "never"
    with pytest.raises(ConfigError, match="run.resume"):
        load(job_dict(tmp_path, run={"num_steps": 10, "resume": "always"}))

