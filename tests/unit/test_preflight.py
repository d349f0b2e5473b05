"""Preflight: a job's resource request is checked against the spec's largest cluster.

Uses a small JobBase subclass (a stand-in for the real kinds) so these tests need
neither Ray nor the other areas' config classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytest
from pydantic import Field

from rayworks.config.cluster import ClusterSpec
from rayworks.config.jobs import Bundle, JobBase
from rayworks.errors import ConfigError
from rayworks.client.preflight import check_resources, preflight

REPO = Path(__file__).resolve().parents[2]


class FakeTrainJob(JobBase):
    """Asks for num_workers GPU workers plus a CPU driver, like a training job."""

    kind: Literal["fake-train"] = Field("fake-train", description="Test kind.")
    num_workers: int = Field(2, ge=1, description="GPU workers.")
    num_gpus_per_worker: float = Field(1, ge=0, description="GPUs per worker.")
    num_cpus_per_worker: float = Field(4, ge=0, description="CPUs per worker.")
    accelerator_type: str | None = Field(None, description="GPU type.")
    max_seq_len: int = Field(512, ge=1, description="Checked by the kind-specific preflight.")

    def resource_request(self) -> list[Bundle]:
        return [Bundle(num_cpus=1, what="train driver"),
                Bundle(num_cpus=self.num_cpus_per_worker, num_gpus=self.num_gpus_per_worker,
                       accelerator_type=self.accelerator_type, count=self.num_workers, what="train workers")]

    def preflight(self, spec: ClusterSpec) -> None:
        if self.max_seq_len > 4096:
            raise ConfigError(f"max_seq_len={self.max_seq_len} exceeds 4096 for spec {spec.name!r}")


def spec(**groups) -> ClusterSpec:
    """An aws spec whose worker groups are given as name=(num_cpus, num_gpus, accelerator, max_workers)."""
    wgs = [{"name": n, "role": "train" if g else "data", "instance_type": "x", "num_cpus": c, "num_gpus": g,
            "accelerator_type": a, "memory_gb": 64, "max_workers": m}
           for n, (c, g, a, m) in groups.items()]
    return ClusterSpec.model_validate({
        "name": "t", "provider": {"type": "aws", "region": "us-west-2"},
        "head": {"instance_type": "x", "num_cpus": 8, "memory_gb": 32},
        "worker_groups": wgs, "storage": {"uri": "s3://b/p"}})


GPU4 = spec(data=(32, 0, None, 4), gpu=(16, 1, "A100", 4))  # GPU groups top out at 4 GPUs


def test_fits():
    preflight(FakeTrainJob(name="ok", num_workers=4), GPU4)


def test_eight_gpu_workers_against_four_gpus_names_both_numbers():
    with pytest.raises(ConfigError) as exc:
        preflight(FakeTrainJob(name="big", num_workers=8), GPU4)
    msg = str(exc.value)
    assert "8 GPUs" in msg and "4 such GPUs" in msg and "'t'" in msg
    assert "train workers" in msg and "max_workers" in msg


def test_gpus_spread_over_groups_add_up():
    two = spec(a=(16, 2, "A100", 1), b=(16, 2, "A100", 1))
    preflight(FakeTrainJob(name="ok", num_workers=4), two)
    with pytest.raises(ConfigError, match=r"5 GPUs.*tops out at 4"):
        preflight(FakeTrainJob(name="big", num_workers=5), two)


def test_gpu_job_on_cpu_only_spec():
    cpu = spec(data=(32, 0, None, 4))
    with pytest.raises(ConfigError, match=r"needs 4 CPU and 1 GPU per unit, but no node type in spec 't'"):
        preflight(FakeTrainJob(name="g"), cpu)


def test_wrong_accelerator_type():
    with pytest.raises(ConfigError, match=r"GPU of type H100 per unit.*largest: 16 CPU, 1 GPU A100"):
        preflight(FakeTrainJob(name="h", accelerator_type="H100"), GPU4)
    # The type matches case-insensitively.
    preflight(FakeTrainJob(name="a", accelerator_type="a100"), GPU4)


def test_worker_too_big_for_any_node():
    with pytest.raises(ConfigError, match=r"needs 64 CPU and 1 GPU"):
        preflight(FakeTrainJob(name="c", num_cpus_per_worker=64), GPU4)


def test_multi_gpu_units_pack_per_node():
    # 2 nodes x 3 GPUs hold only two 2-GPU units (one per node), not three.
    s = spec(gpu=(32, 3, None, 2))
    preflight(FakeTrainJob(name="ok", num_workers=2, num_gpus_per_worker=2), s)
    with pytest.raises(ConfigError, match=r"3 x 2 GPU = 6 GPUs.*tops out at 6 such GPUs \(2 units\)"):
        preflight(FakeTrainJob(name="no", num_workers=3, num_gpus_per_worker=2), s)


def test_total_cpus():
    s = spec(data=(4, 0, None, 1))  # head 8 + 4 = 12 CPUs
    check_resources([Bundle(num_cpus=2, count=6, what="readers")], s)
    with pytest.raises(ConfigError, match=r"readers needs 7 x 2 CPU = 14 CPUs.*tops out at 6"):
        check_resources([Bundle(num_cpus=2, count=7, what="readers")], s)


def test_groups_with_zero_max_workers_do_not_count():
    s = spec(gpu=(16, 8, "H100", 0))
    with pytest.raises(ConfigError, match="no node type"):
        preflight(FakeTrainJob(name="z"), s)


def test_kind_specific_preflight_runs():
    with pytest.raises(ConfigError, match="max_seq_len=8192"):
        preflight(FakeTrainJob(name="s", max_seq_len=8192), GPU4)


def test_against_shipped_specs():
    """The shipped cloud specs hold a 16-GPU H100 training run, not a 32-GPU one."""
    from rayworks.config.cluster import load_cluster_spec

    aws = load_cluster_spec(REPO / "cluster" / "aws.yaml")
    preflight(FakeTrainJob(name="ok", num_workers=16, num_cpus_per_worker=8, accelerator_type="H100"), aws)
    with pytest.raises(ConfigError, match=r"32 GPUs of type H100.*tops out at 16"):
        preflight(FakeTrainJob(name="no", num_workers=32, num_cpus_per_worker=8, accelerator_type="H100"), aws)
    local = load_cluster_spec(REPO / "cluster" / "local.yaml")
    with pytest.raises(ConfigError, match="no node type in spec 'local'"):
        preflight(FakeTrainJob(name="g"), local)


# ---------------------------------------------------------------- a pipeline is validated whole
def _pipeline(tmp_path, serve: str) -> Path:
    """The shipped prep and train stages (by path) and an inline serve stage."""
    p = tmp_path / "pipeline.yaml"
    p.write_text(f"kind: pipeline\nname: lic\ncluster: {REPO / 'cluster' / 'local.yaml'}\n"
                 f"corpus: {{output: {tmp_path / 'corpus'}}}\n"
                 f"prep: {REPO / 'jobs' / 'configs' / 'prep.yaml'}\ntrain: {REPO / 'jobs' / 'configs' / 'train.yaml'}\n"
                 f"serve:\n{serve}")
    return p


SERVE_NO_AUTH = ("  kind: serve\n  models:\n    - id: tiny\n      source: anywhere\n      accelerator: cpu\n"
                 "      engine: {max_model_len: 512, dtype: float32}\n")


def test_pipeline_with_a_bad_inline_stage_fails_validate_up_front(tmp_path, capsys):
    from rayworks.client.cli import main

    bad = _pipeline(tmp_path, SERVE_NO_AUTH)
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lic:serve: auth: Field required" in err
    # With the section, validation passes: the serve stage's source is the link to training's
    # export (which does not exist yet), so only config checks run for the stages.
    good = _pipeline(tmp_path, SERVE_NO_AUTH + f"  auth: {{api_keys_file: {tmp_path / 'keys'}}}\n")
    assert main(["validate", str(good)]) == 0, capsys.readouterr().err
    assert "valid pipeline job" in capsys.readouterr().out


def test_pipeline_links_are_filled_in_before_validation(tmp_path):
    from rayworks.config.cluster import load_cluster_spec
    from rayworks.config.pipeline import load_pipeline

    spec = load_cluster_spec(REPO / "cluster" / "local.yaml")
    pipe = load_pipeline(_pipeline(tmp_path, SERVE_NO_AUTH + f"  auth: {{api_keys_file: {tmp_path / 'k'}}}\n"))
    jobs = pipe.stage_jobs(spec)
    assert jobs["train"].data.prep_uri == f"{spec.storage.uri}/prep/python-docs"
    assert jobs["serve"].models[0].source == f"{spec.storage.uri}/train/{jobs['train'].name}/export"


def test_run_refuses_a_bad_stage_before_the_first_stage_runs(tmp_path):
    """`rayworks run` checks every stage before bringing a cluster up or building the corpus."""
    from rayworks.config.pipeline import load_pipeline
    from rayworks.client.pipeline import run

    pipe = load_pipeline(_pipeline(tmp_path, SERVE_NO_AUTH))
    with pytest.raises(ConfigError, match="lic:serve: auth: Field required"):
        run(pipe, address="http://127.0.0.1:9", bring_up=False)
    assert not (tmp_path / "corpus").exists()  # the corpus step (the first work) never ran
