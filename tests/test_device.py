"""Device choice, ``precision=auto`` (the CPU's bf16 instructions, a GPU's compute capability, mocked) and the
TF32 policy."""
import logging

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_cfg
from fake_cuda import FakeCuda
from cli.compose import build_trainer
from training.precision import resolve_precision
from utils import device
from utils.device import cpu_bf16_instructions, resolve_device
from utils.errors import ConfigError


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
    monkeypatch.setattr("training.precision.cpu_bf16_instructions", lambda: found)
    with caplog.at_level(logging.INFO, logger="training.precision"):
        assert resolve_precision("auto", torch.device("cpu")) == chosen
    assert f"precision auto -> {chosen}: {says}" in caplog.text
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("found,warned", [([], True), (["avx512_bf16"], False)])
def test_bf16_asked_of_a_cpu_that_emulates_it_is_warned_about(monkeypatch, caplog, found, warned):
    monkeypatch.setattr("training.precision.cpu_bf16_instructions", lambda: found)
    with caplog.at_level(logging.WARNING, logger="training.precision"):
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert ("bf16 is emulated here" in caplog.text) == warned
    assert not warned or "trainer.precision=auto picks fp32 here" in caplog.text


def test_cuda_without_a_gpu_is_refused_in_one_line():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match=r"trainer.device=cuda: no CUDA device is available \(use auto or cpu\)"):
        resolve_device("cuda")


# ------------------------------------------------------------------------------ GPUs, mocked (tests/fake_cuda.py)
@pytest.mark.parametrize("capability,chosen", [((7, 5), "fp16"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_is_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, caplog, capability, chosen):
    """A T4 (7.5) reports torch.cuda.is_bf16_supported() True (emulated): auto must still pick fp16 there."""
    FakeCuda(monkeypatch, [capability], names=["Tesla T4" if capability < (8, 0) else "NVIDIA A100"])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    with caplog.at_level(logging.INFO, logger="training.precision"):
        assert resolve_precision("auto", torch.device("cuda", 0)) == chosen
    assert f"precision auto -> {chosen}: " in caplog.text and f"compute capability {capability[0]}." in caplog.text


def test_auto_precision_reads_the_chosen_gpu_not_the_current_one(monkeypatch):
    FakeCuda(monkeypatch, [(7, 5), (9, 0)])  # current device: cuda:0, a T4
    assert resolve_precision("auto", torch.device("cuda", 1)) == "bf16"
    assert resolve_precision("auto", torch.device("cuda", 0)) == "fp16"


def test_fp16_with_a_closure_optimizer_is_refused_and_never_chosen(monkeypatch):
    with pytest.raises(ConfigError, match=r"trainer.precision='fp16' is invalid: allowed bf16, fp32 or auto with a "
                                          r"closure optimizer \(L-BFGS\)"):
        resolve_precision("fp16", torch.device("cpu"), closure_optimizer=True)
    FakeCuda(monkeypatch, [(7, 5)])
    assert resolve_precision("auto", torch.device("cuda", 0), closure_optimizer=True) == "fp32"


def test_cuda_n_must_be_a_visible_gpu(monkeypatch):
    FakeCuda(monkeypatch, [(8, 0), (8, 0)])
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"trainer.device=cuda:2: this process sees 2 GPU\(s\), allowed cuda:0 to "
                                         r"cuda:1"):
        resolve_device("cuda:2")


def test_tf32_policy_is_set_both_ways_and_the_lab_keeps_ieee_fp32():
    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        assert device.set_tf32(True) == "CUDA fp32 matmuls and convolutions: tf32 (trainer.tf32=true)"
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("tf32",) * 2
        with device.full_fp32():
            assert torch.backends.cuda.matmul.fp32_precision == torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # the training policy is back
        device.set_tf32(False)
        assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before


def test_build_logs_the_tf32_policy_on_a_gpu(cfg, tmp_path, caplog):
    if not torch.cuda.is_available():
        pytest.skip("needs a GPU (TEST_DEVICE=cuda)")
    with caplog.at_level(logging.INFO, logger="training.build"):
        build_trainer(cfg("trainer.device=cuda", "trainer.tf32=false"), tmp_path)
    assert "CUDA fp32 matmuls and convolutions: ieee (trainer.tf32=false)" in caplog.text


@pytest.mark.parametrize("tool,entry", [("analysis.hessian", "hessian_report"), ("analysis.landscape", "landscape")])
def test_lab_tools_compute_in_ieee_fp32_whatever_the_training_policy(monkeypatch, tool, entry):
    import importlib
    module, seen = importlib.import_module(tool), []

    def record(name):
        seen.append((torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision))
        raise LookupError("stop here")

    before = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    monkeypatch.setattr(module, "resolve_device", record)
    try:
        device.set_tf32(True)
        cfg = compose_cfg(tiny=False).trainer  # any config: the tool stops at its device
        with pytest.raises(LookupError):
            getattr(module, entry)(OmegaConf.create({"top_k": 1, "lanczos_steps": 2, "resolution": 2, "span": 1.0,
                                                      "trainer": cfg}), "unused")
        assert seen == [("ieee", "ieee")] and torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = before
