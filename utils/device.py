"""Device choice and what the processor can do."""
from pathlib import Path

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name}: no CUDA device is available (use auto or cpu)")
    return torch.device(name)


BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # AMX tiles (Sapphire Rapids on), AVX-512 dot products (Cooper Lake, Zen 4)


def cpu_bf16_instructions(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The bf16 matrix instructions this CPU has (of ``BF16_FLAGS``), where bf16 autocast pays off."""
    try:
        flags = set(cpuinfo.read_text().split())
    except OSError:
        return []
    return [flag for flag in BF16_FLAGS if flag in flags]


def auto_precision(device: torch.device) -> str:
    """The fastest safe precision: bf16 where the hardware computes it natively, else fp32."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_bf16_instructions() else "fp32"
