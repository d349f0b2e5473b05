"""Model presets, FLOPs/MFU, and the deterministic data order."""

from __future__ import annotations

import os

import numpy as np
import pytest

from rayworks.train.data import SplitIndex, TrainPlan, locate
from rayworks.train.flops import flops_per_token, mfu, peak_flops
from rayworks.train.model import PRESETS, count_params, llama_config_dict


def test_param_count_matches_torch():
    from rayworks.train.model import build_model

    cfg = llama_config_dict({"preset": "tiny", "overrides": {"num_key_value_heads": 2}}, 512, 64)
    model = build_model(cfg)
    assert count_params(cfg)["total"] == sum(p.numel() for p in model.parameters())


def test_preset_sizes():
    one_b = count_params(llama_config_dict({"preset": "1b"}, 32000, 2048))["total"]
    seven_b = count_params(llama_config_dict({"preset": "7b"}, 32000, 4096))["total"]
    assert 1.0e9 < one_b < 1.2e9 and 6.5e9 < seven_b < 7.0e9  # untied embeddings
    assert set(PRESETS) == {"tiny", "125m", "1b", "7b"}


def test_flops_and_peaks():
    cfg = llama_config_dict({"preset": "7b"}, 32000, 4096)
    n = count_params(cfg)["non_embedding"]
    assert flops_per_token(cfg, 4096) == 6 * n + 12 * 32 * 4096 * 4096
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA L4") == 121e12 and peak_flops("NVIDIA L40S") == 362e12
    assert peak_flops("cpu") is None and mfu(1e3, 1e9, 1, None) is None
    assert mfu(1000, 1e9, 2, 1e12) == pytest.approx(0.5)


def test_epoch_order_is_a_permutation_and_deterministic():
    index = SplitIndex(("a", "b", "c"), (5, 7, 4), 8)
    pos = np.arange(2 * index.num_rows)
    s1, r1 = locate(index, pos, seed=3, shuffle=True)
    s2, r2 = locate(index, pos, seed=3, shuffle=True)
    assert (s1 == s2).all() and (r1 == r2).all()
    for e in range(2):
        sl = slice(e * 16, (e + 1) * 16)
        pairs = set(zip(s1[sl].tolist(), r1[sl].tolist()))
        assert pairs == {(s, r) for s, n in enumerate(index.rows) for r in range(n)}
    assert (s1[:16] != s1[16:]).any() or (r1[:16] != r1[16:]).any()  # each epoch its own order


def test_ranks_split_each_global_batch():
    plan = TrainPlan(SplitIndex(("a",), (100,), 8), num_workers=2, micro_batch=2, grad_accum=3, num_steps=10,
                     seed=0, shuffle=False, output_uri="/nonexistent", checkpoint_every=5)
    steps = np.array([4])
    p0, p1 = plan.positions(0, steps), plan.positions(1, steps)
    assert sorted(np.concatenate([p0, p1]).tolist()) == list(range(36, 48))
    assert plan.start_step() == 1


@pytest.mark.parametrize("value,expected", [("9.0a", "9.0"), ("8.0;9.0a+PTX", "8.0;9.0+PTX"),
                                            ("10.0f 12.0a", "10.0 12.0"), ("8.6", "8.6"), (None, None)])
def test_cuda_arch_list_is_one_deepspeed_can_parse(monkeypatch, value, expected):
    from rayworks.train.loop import cuda_arch_list_for_deepspeed

    if value is None:
        monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    else:
        monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", value)
    assert cuda_arch_list_for_deepspeed() == expected
    assert os.environ.get("TORCH_CUDA_ARCH_LIST") == expected
