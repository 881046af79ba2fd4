"""Where a model runs: device choice and moving a batch's model inputs there (train and inference)."""

from __future__ import annotations

import torch

#: batch keys the model's ``forward`` takes (see ``rmi.data.dataset``)
MODEL_INPUT_KEYS = ("tokens", "image_of", "images", "trunk_features")


def select_device(preferred: str | None = None) -> torch.device:
    """``preferred`` if given, else CUDA when available, else CPU."""
    if preferred:
        return torch.device(preferred)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def model_inputs(batch: dict, device: torch.device) -> dict:
    """Move a batch's model inputs to ``device`` (non-blocking from pinned memory)."""
    return {k: batch[k].to(device, non_blocking=True) for k in MODEL_INPUT_KEYS if k in batch}


def native_bf16(device: torch.device) -> bool:
    """True where bf16 convolutions and matmuls run natively: CUDA, or a CPU with AMX or AVX512-BF16
    (elsewhere CPU bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return True
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # torch.cpu's own (private) checks
    return device.type == "cpu" and any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on CUDA when ``enabled``; a no-op context elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")
