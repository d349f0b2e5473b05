"""Model FLOPs and MFU: achieved model FLOP/s over the devices' peak.

Training FLOPs per token follow the PaLM paper's appendix B: ``6 N + 12 L H T``, with
N the parameters that do matmuls (everything but the input embedding lookup), L
layers, H hidden size and T the sequence length (the attention scores). Peak numbers
are dense bf16 tensor-core FLOP/s from the vendors' datasheets.
"""

from __future__ import annotations

from rayworks.train.model import count_params

# Dense (no sparsity) bf16 peak FLOP/s per device.
PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "GH200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIE": 756e12,
    "H100": 989e12,
    "H800": 989e12,
    "B200": 2250e12,
    "B100": 1750e12,
    "A100": 312e12,
    "A800": 312e12,
    "L40S": 362e12,
    "L40": 181e12,
    "L4": 121e12,
    "A10G": 70e12,
    "A10": 125e12,
    "RTX 4090": 165e12,
    "MI300X": 1307e12,
    "MI250X": 383e12,
}


def flops_per_token(cfg: dict, seq_len: int) -> float:
    """Training (forward + backward) FLOPs per token of a Llama config dict."""
    n = count_params(cfg)["non_embedding"]
    return 6.0 * n + 12.0 * cfg["num_hidden_layers"] * cfg["hidden_size"] * seq_len


def peak_flops(device_name: str | None) -> float | None:
    """Peak bf16 FLOP/s for a device name (e.g. torch.cuda.get_device_name()), or None if unknown."""
    if not device_name:
        return None
    name = device_name.upper()
    # Longest key first, so "H100 PCIE" wins over "H100" and "L40S" over "L4".
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key.upper() in name:
            return PEAK_BF16_FLOPS[key]
    return None


def mfu(tokens_per_s: float, fpt: float, num_devices: int, peak_per_device: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1], or None when the peak is unknown (e.g. CPU)."""
    if not peak_per_device:
        return None
    return tokens_per_s * fpt / (peak_per_device * num_devices)
