"""Device choice, what the hardware computes natively, and the fp32 math policy on GPUs."""
from contextlib import contextmanager
from pathlib import Path

import torch

from utils.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU, or ``cuda:N`` past the visible
    GPUs, is an error. ``cuda`` keeps no index: the caller binds it (one process: cuda:0; torchrun: LOCAL_RANK)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name}: no CUDA device is available (use auto or cpu)")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise ConfigError(f"trainer.device={name}: this process sees {count} GPU(s), allowed cuda:0 to "
                          f"cuda:{count - 1} (or cuda, auto, cpu)")
    return device


BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # AMX tiles (Sapphire Rapids on), AVX-512 dot products (Cooper Lake, Zen 4)


def cpu_bf16_instructions(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The bf16 matrix instructions this CPU has (of ``BF16_FLAGS``), where bf16 autocast pays off."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return []
    return [flag for flag in BF16_FLAGS if flag in flags]


def set_tf32(enabled: bool) -> str:
    """Let CUDA fp32 matmuls and convolutions run on TF32 tensor cores (10-bit mantissa, ~1e-3 relative error;
    Ampere and later) or keep them IEEE fp32. Process-wide; CPU math is untouched. Returns a line to log."""
    policy = "tf32" if enabled else "ieee"
    torch.backends.cuda.matmul.fp32_precision = policy
    torch.backends.cudnn.conv.fp32_precision = policy
    return f"CUDA fp32 matmuls and convolutions: {policy} (trainer.tf32={str(enabled).lower()})"


@contextmanager
def full_fp32():
    """IEEE fp32 for CUDA matmuls and convolutions inside the block (the lab's numbers: Hessian spectra, loss
    landscapes), whatever the training policy; the previous policy afterwards."""
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before
