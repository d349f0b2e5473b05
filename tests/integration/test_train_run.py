"""Training on the session cluster, 2 CPU workers: every ZeRO stage trains, num_epochs counts steps,
init_from loads weights, a worker killed for real mid-run resumes, a resubmission of the same work
resumes and of other work is refused, and exports reload with the trained logits.

One ZeRO-2 run (module fixture) is the reference: its checkpoints serve the export and CLI checks,
its export is the init_from of the ZeRO-1 run, a copy of its output is where ZeRO-0 is refused and
then started fresh, and the killed run must reproduce it batch for batch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests import mlflowfixture as mlf
from tests.prepfixture import make_prep_output

pytestmark = pytest.mark.integration

NUM_STEPS = 12


def train_dict(prep: Path, out: Path, name: str, stage: int = 2, num_steps: int | None = NUM_STEPS,
               run: dict | None = None, model: dict | None = None, **env) -> dict:
    d = {"kind": "train", "name": name,
         "model": model or {"preset": "tiny"},
         "data": {"prep_uri": str(prep), "num_val_sequences": 32},
         "deepspeed": {"train_batch_size": 16, "train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 2,
                       "gradient_clipping": 1.0,
                       "optimizer": {"type": "AdamW", "params": {"lr": 3e-3, "weight_decay": 0.01}},
                       "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 3, "warmup_max_lr": "auto"}},
                       "zero_optimization": {"stage": stage}},
         "scaling": {"num_workers": 2},
         "run": {"num_steps": num_steps, "log_every_steps": 4, "eval_every_steps": 6, "checkpoint_every_steps": 4,
                 "output_uri": str(out), "max_failures": 1, **(run or {})}}
    if env:
        d["runtime_env"] = {"env_vars": env}
    return d


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return make_prep_output(tmp_path_factory.mktemp("prep") / "prep", seq_len=64, max_train_sequences=600)


def run_inprocess(d: dict) -> dict:
    from rayworks.config.jobs import load_job_data
    from rayworks.train.job import run

    return run(load_job_data(d, "test", Path("/")))


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    """One real MLflow server, started by rayworks, that every training run of this module logs to."""
    with mlf.mlflow_server(tmp_path_factory.mktemp("mlflow"), mlf.TRAIN_PORT) as url:
        yield url


@pytest.fixture(scope="module")
def zero2(ray_on_cluster, prep, tmp_path_factory, tracking_server):
    out = tmp_path_factory.mktemp("train") / "z2"
    return out, run_inprocess(train_dict(prep, out, "z2", stage=2))


def probe_logits_of_export(export_dir: Path, probe_path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    probe = torch.load(probe_path)
    model = AutoModelForCausalLM.from_pretrained(export_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=probe["input_ids"]).logits, probe["logits"]


def test_zero2_trains_and_val_loss_falls(zero2):
    out, m = zero2
    assert m["steps"] == NUM_STEPS and m["optimizer_steps"] == NUM_STEPS
    assert m["num_tokens"] == NUM_STEPS * 16 * 64
    assert m["val_loss"] < m["val_loss_step0"] - 0.3, m
    assert m["resumed_from"] == []
    saved = json.loads((out / "manifest.json").read_text())
    assert saved["kind"] == "train" and saved["inputs"][0]["role"] == "prep" and saved["inputs"][0]["sha256"] \
        and saved["config_hash"]
    ckpts = sorted(p.name for p in (out / "ray_train").glob("checkpoint_0*"))
    assert ckpts == ["checkpoint_00000008", "checkpoint_00000012"]  # keep the newest 2


def test_export_has_the_trained_logits_and_the_cli_exports_any_checkpoint(zero2, tmp_path):
    import torch

    from rayworks.client.cli import main as cli

    out, m = zero2
    final = out / "ray_train" / "checkpoint_00000012"
    got, want = probe_logits_of_export(out / "export", final / "probe_logits.pt")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    meta = json.loads((out / "export" / "rayworks_export.json").read_text())
    assert meta["kind"] == "export" and meta["step"] == NUM_STEPS and meta["prep_manifest"]["sha256"]
    assert meta["val_loss"] == pytest.approx(m["val_loss"])
    tok_cfg = json.loads((out / "export" / "tokenizer_config.json").read_text())
    assert "chat_template" in tok_cfg or (out / "export" / "chat_template.jinja").exists()

    # The CLI exports an earlier checkpoint of the same run: step 8's weights, not step 12's.
    assert cli(["export", str(out / "ray_train" / "checkpoint_00000008"), str(tmp_path / "exp8")]) == 0
    got8, _ = probe_logits_of_export(tmp_path / "exp8", final / "probe_logits.pt")
    assert not torch.allclose(got8, want)
    assert json.loads((tmp_path / "exp8" / "rayworks_export.json").read_text())["step"] == 8


def test_zero2_is_one_mlflow_run_with_the_reported_metrics_and_a_registered_export(zero2, prep, tracking_server):
    from rayworks import storage
    from rayworks.tracking.registry import TAG_EXPORT_SHA, TAG_PREP_SHA, TAG_RUN

    out, m = zero2
    tr = m["tracking"]
    assert tr["run_id"] and tr["skipped_logs"] == 0 and tr["failed_calls"] == 0, tr
    run_id, client = tr["run_id"], mlf.client(tracking_server)
    mlf.assert_logged_equals_reported(tracking_server, run_id, out)
    steps = mlf.expected_log_steps(NUM_STEPS, 4, 6, 4)
    assert [s for s, _ in mlf.history(tracking_server, run_id, "train_loss")] == steps
    assert [s for s, _ in mlf.history(tracking_server, run_id, "val_loss")] == [0, 6, 12]
    assert dict(mlf.history(tracking_server, run_id, "train_loss"))[NUM_STEPS] == m["train_loss"]
    run = client.get_run(run_id)
    ds = json.loads(run.data.params["deepspeed_json"])  # the effective DeepSpeed JSON the workers got
    assert ds["train_batch_size"] == 16 and ds["zero_optimization"]["stage"] == 2 and ds["gradient_clipping"] == 1.0
    assert run.data.params["world_size"] == "2" and int(run.data.params["model.num_parameters"]) > 0
    assert run.data.params["config.run.num_steps"] == str(NUM_STEPS) and run.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(run_id)} | {a.path for a in client.list_artifacts(run_id, "export")}
    assert {"manifest.json", "deepspeed.json", "prep_manifest_link.json", "export/manifest.json"} <= arts, arts
    state = json.loads((out / "ray_train" / "checkpoint_00000012" / "rayworks_state.json").read_text())
    assert state["tracking_run_id"] == run_id
    # The export is a model version whose tags pin the manifests and the run.
    mv = client.get_model_version("z2", str(tr["model_version"]["version"]))
    assert mv.tags[TAG_EXPORT_SHA] == storage.sha256_file(str(out / "export" / "manifest.json"))
    assert mv.tags[TAG_PREP_SHA] == storage.sha256_file(str(prep / "manifest.json"))
    assert mv.tags[TAG_RUN] == run_id and mv.run_id == run_id


def test_zero3_trains_and_its_shards_export(ray_on_cluster, prep, tmp_path):
    import torch

    out = tmp_path / "z3"
    m = run_inprocess(train_dict(prep, out, "z3", stage=3, num_steps=6))
    assert m["steps"] == 6 and m["optimizer_steps"] == 6 and m["val_loss"] < m["val_loss_step0"] - 0.3, m
    ckpt = out / "ray_train" / "checkpoint_00000006"
    assert sorted(p.name for p in (ckpt / "ds").glob("zero_pp_rank_*_model_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    got, want = probe_logits_of_export(out / "export", ckpt / "probe_logits.pt")  # parameters were partitioned
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_zero1_continues_from_init_from_weights(ray_on_cluster, prep, zero2, tmp_path, monkeypatch, capfd):
    _, ref = zero2
    out = tmp_path / "z1"
    # A tracking server that is down (nothing listens there) never stops training; the gap is reported.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{mlf.DEAD_PORT}")
    m = run_inprocess(train_dict(prep, out, "z1", stage=1, num_steps=6, model={"init_from": str(zero2[0] / "export")},
                                 run={"export": False, "checkpoint_every_steps": 6}))
    # Step 0 evaluates the loaded weights: the reference run's final loss, not a random model's.
    assert m["val_loss_step0"] == pytest.approx(ref["val_loss"], rel=1e-4), (m, ref)
    assert m["steps"] == 6 and m["optimizer_steps"] == 6
    assert m["val_loss"] < m["val_loss_step0"], m
    gap = m["tracking"]
    # No run; every log was skipped: the driver's params, tags, 2 texts and the end, rank 0's 3 log steps.
    assert gap["run_id"] is None and gap["skipped_logs"] >= 3 + 3 and gap["gap_steps"] == [0, 6], gap
    assert "Connection" in gap["last_error"] and "model_version" not in gap
    assert "tracking server" in capfd.readouterr().out  # the one warning, in the job log
    meta = json.loads((out / "ray_train" / "checkpoint_00000006" / "rayworks_state.json").read_text())
    assert meta["zero_stage"] == 1
    assert sorted(p.name for p in (out / "ray_train" / "checkpoint_00000006" / "ds").glob("*optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def test_other_work_is_refused_then_zero0_starts_fresh_and_counts_epochs(ray_on_cluster, prep, zero2, tmp_path):
    from rayworks.errors import ConfigError

    out = tmp_path / "z2copy"
    shutil.copytree(zero2[0], out)  # the reference run's checkpoints, under the same name
    epochs = 0.2
    d = train_dict(prep, out, "z2", stage=0, num_steps=None, run={"num_epochs": epochs})
    with pytest.raises(ConfigError) as e:
        run_inprocess(d)
    assert "checkpoint at step 12" in str(e.value) and "deepspeed.zero_optimization.stage: 2 -> 0" in str(e.value)
    assert "run.resume: never" in str(e.value)

    d["run"]["resume"] = "never"
    m = run_inprocess(d)
    rows = json.loads((prep / "manifest.json").read_text())["splits"]["train"]["num_sequences"]
    steps = int(epochs * rows) // 16
    assert steps >= 6 and m["steps"] == m["optimizer_steps"] == steps and m["num_tokens"] == steps * 16 * 64
    assert m["resumed_from"] == [] and m["val_loss"] < m["val_loss_step0"] - 0.3, m
    export = json.loads((out / "export" / "rayworks_export.json").read_text())
    assert export["step"] == steps and export["probe_max_abs_logit_diff"] < 1e-4  # stage 0's module file
    (kept,) = (out / "superseded").iterdir()  # the refused run's checkpoints are kept, not deleted
    assert (kept / "ray_train" / "checkpoint_00000012" / "rayworks_state.json").exists()


@pytest.mark.timeout(1500)  # two real submissions through the Jobs API, one with a worker restart
def test_killed_worker_resumes_without_losing_or_repeating_batches(local_cluster, prep, zero2, tmp_path,
                                                                   tracking_server):
    from rayworks.tracking import registry

    _, ref = zero2
    out = tmp_path / "killed"
    cfg = tmp_path / "train.yaml"
    # Rank 1 SIGKILLs its own process at step 6, once the controller has registered the step-4 checkpoint.
    cfg.write_text(yaml.safe_dump(train_dict(prep, out, "killed", RAYWORKS_TRAIN_KILL_AT_STEP="6:1",
                                             MLFLOW_TRACKING_URI=tracking_server)))
    proc = local_cluster.rayworks("submit", str(cfg), "--cluster", str(local_cluster.spec_path), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "fault_injected_step6").exists()
    m = json.loads((out / "manifest.json").read_text())
    assert m["resumed_from"] == [4]
    assert m["steps"] == ref["steps"] == NUM_STEPS
    assert m["optimizer_steps"] == ref["optimizer_steps"] == NUM_STEPS
    assert m["num_tokens"] == ref["num_tokens"]
    assert m["data_digest"] == ref["data_digest"]  # the same batches, in the same order, once each
    assert m["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-4)
    assert m["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-4)
    # One MLflow run across the worker-group restart: every log step once, in order, equal to what was reported.
    run_id = m["tracking"]["run_id"]
    client = mlf.client(tracking_server)
    runs = client.search_runs([client.get_run(run_id).info.experiment_id],
                              f"tags.`rayworks.output_uri` = '{out}'")
    assert [r.info.run_id for r in runs] == [run_id] and m["tracking"]["skipped_logs"] == 0
    steps = mlf.expected_log_steps(NUM_STEPS, 4, 6, 4)
    assert [s for s, _ in mlf.history(tracking_server, run_id, "train_loss")] == steps
    mlf.assert_logged_equals_reported(tracking_server, run_id, out)
    # Serving the export moves the `serving` alias to its version (what the serve job calls after a deploy).
    v1 = m["tracking"]["model_version"]["version"]
    assert [v["version"] for v in registry.mark_serving(tracking_server, [str(out / "export")])] == [v1]

    # Submitting the same work again with more steps continues from its last checkpoint.
    proc = local_cluster.rayworks("submit", str(cfg), "--cluster", str(local_cluster.spec_path),
                                  "--set", f"run.num_steps={NUM_STEPS + 4}", timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m2 = json.loads((out / "manifest.json").read_text())
    assert m2["resumed_from"] == [4, NUM_STEPS] and m2["optimizer_steps"] == NUM_STEPS + 4
    # The resubmitted job continued the same run; its new export is version 2, and a rollout onto it moves the alias.
    assert m2["tracking"]["run_id"] == run_id
    assert [s for s, _ in mlf.history(tracking_server, run_id, "train_loss")] == steps + [NUM_STEPS + 4]
    v2 = m2["tracking"]["model_version"]["version"]
    assert v2 == v1 + 1
    registry.mark_serving(tracking_server, [str(out / "export")])
    assert registry.resolve(tracking_server, "models:/killed@serving")["version"] == v2
    assert registry.resolve(tracking_server, f"models:/killed/{v2}")["source"] == str(out / "export")
    from rayworks.errors import ConfigError

    with pytest.raises(ConfigError, match="no longer has the registered sha256"):
        registry.resolve(tracking_server, f"models:/killed/{v1}")  # its folder now holds version 2
