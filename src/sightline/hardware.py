"""What the machine a run lands on can do, decided at run time: the numeric precision.

``precision: auto`` (the default of every model that benefits) means bf16 mixed precision where
the device computes bf16 natively, and float32 elsewhere. Where bf16 is emulated it is not a
speed-up but a slow-down: on a CPU without AVX-512 BF16 or AMX a training step under bf16
autocast took 13 to 20 times as long as in float32 (docs/benchmarks.md, 2026-12-04).
"""

from __future__ import annotations

import torch

AUTO = "auto"
BF16 = "bf16-mixed"
FLOAT32 = "32-true"


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bf16 matrix and convolution kernels natively: a CUDA GPU that
    supports bf16 (Ampere and later), or a CPU with AVX-512 BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return False


def accelerator_device(accelerator: str) -> torch.device:
    """The device Lightning's ``accelerator`` setting lands on in this process."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return torch.device("cuda")
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """``auto`` -> ``bf16-mixed`` where ``device`` runs bf16 natively, else ``32-true``; any
    other value (a Lightning precision) is returned as it is."""
    if precision != AUTO:
        return precision
    return BF16 if native_bf16(device) else FLOAT32
