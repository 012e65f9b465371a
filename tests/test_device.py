"""Device choice and the CPU's bf16 instructions, which decide ``precision=auto``."""
import logging

import pytest
import torch

from training.run import choose_precision
from utils import device
from utils.device import cpu_bf16_instructions, resolve_device


@pytest.mark.parametrize("flags,found", [
    ("fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile", ["amx_bf16", "avx512_bf16"]),  # Sapphire Rapids
    ("fpu avx2 avx512f avx512_bf16", ["avx512_bf16"]),                                 # Zen 4
    ("fpu avx2 avx512f avx512_bf16x", []),                                              # a flag, not a prefix
    ("fpu avx2", []),
])
def test_bf16_instructions_are_read_from_cpuinfo(tmp_path, flags, found):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert cpu_bf16_instructions(cpuinfo) == found


def test_no_cpuinfo_means_no_bf16(tmp_path):
    assert cpu_bf16_instructions(tmp_path / "missing") == []


@pytest.mark.parametrize("found,chosen,says", [
    (["avx512_bf16"], "bf16", "this CPU has avx512_bf16"),
    ([], "fp32", "this CPU has none of amx_bf16, avx512_bf16"),
])
def test_auto_precision_names_what_it_found(monkeypatch, caplog, found, chosen, says):
    monkeypatch.setattr(device, "cpu_bf16_instructions", lambda: found)
    monkeypatch.setattr("training.run.cpu_bf16_instructions", lambda: found)
    with caplog.at_level(logging.INFO, logger="training.run"):
        assert choose_precision("auto", torch.device("cpu")) == chosen
    assert f"precision auto -> {chosen}: {says}" in caplog.text
    assert choose_precision("fp32", torch.device("cpu")) == "fp32"


def test_cuda_without_a_gpu_is_refused_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match=r"trainer.device=cuda: no CUDA device is available \(use auto or cpu\)"):
        resolve_device("cuda")
