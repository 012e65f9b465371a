"""Reproducible runs: with ``trainer.deterministic=true`` two runs of the same seed end with identical metrics,
weights, optimizer state and RNGs on the CPU; another seed ends elsewhere (so the comparison can fail)."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from fake_cuda import FakeCuda
from test_resume import assert_same, final_state, metrics
from cli.compose import train
from utils.seed import rng_state, seed_everything, set_rng_state

RUNS = {
    "mlp, dropout, crops": ("model.dropout=0.3", "data.crop_padding=2", "optimizer=adam", "scheduler=cosine"),
    "cnn, flips": ("model=cnn", "data.train_subset=128", "data.flip=true", "optimizer=momentum"),
}


@pytest.fixture(autouse=True)
def restore_determinism():
    """Deterministic mode is process-wide: leave it as this test found it."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[1:]


@pytest.mark.needs_data
@pytest.mark.parametrize("run", RUNS)
def test_same_seed_gives_the_same_run_and_another_seed_does_not(cfg, tmp_path, run):
    overrides = ("trainer.deterministic=true", "trainer.epochs=2", "logger=none", *RUNS[run])
    for name, seed in [("a", 0), ("b", 0), ("other seed", 1)]:
        train(cfg(*overrides, f"trainer.seed={seed}"), tmp_path / name)
        assert torch.are_deterministic_algorithms_enabled()
    assert_same(final_state(tmp_path / "a"), final_state(tmp_path / "b"))
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    other = final_state(tmp_path / "other seed")["model"]
    assert any(not torch.equal(w, other[k]) for k, w in final_state(tmp_path / "a")["model"].items())


def test_deterministic_mode_is_set_both_ways():
    seed_everything(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark  # autotuning could pick another algorithm each run
    seed_everything(0, deterministic=False)  # a later run in the same process must not inherit it
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert torch.backends.cudnn.benchmark  # the loaders' shapes are fixed: autotune each convolution once


def test_cublas_workspace_is_configured_before_any_job_runs():
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG at its first use; a deterministic job later in an in-process sweep
    needs it set by then, so it is set when the engine is imported, not when a deterministic job starts."""
    code = "import os, training.trainer; print(os.environ.get('CUBLAS_WORKSPACE_CONFIG'))"
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == ":4096:8", done.stderr[-2000:]


# -------------------------------------------------- a checkpoint's RNG states on fewer GPUs (torch.cuda mocked)
def saved_on_8_gpus() -> dict:
    """rng_state() as the old format saved it on a machine with 8 visible GPUs: one CUDA state per GPU."""
    return {**rng_state(), "cuda": [torch.full((16,), i, dtype=torch.uint8) for i in range(8)]}


def test_a_checkpoint_from_8_gpus_resumes_on_1(monkeypatch):
    state = saved_on_8_gpus()
    gpus = FakeCuda(monkeypatch, [(8, 0)])
    set_rng_state(state)  # torch.cuda.set_rng_state_all would index cuda:1..7 here: IndexError
    (call,) = gpus.calls
    assert call[0] == "set_rng_state" and call[1][0] == 0 and torch.equal(call[1][1], state["cuda"][0])
    assert "cuda" in rng_state() and torch.equal(rng_state()["cuda"], torch.zeros(16, dtype=torch.uint8))


def test_a_checkpoint_from_8_gpus_resumes_on_the_cpu(monkeypatch):
    state = saved_on_8_gpus()
    expected = torch.rand(3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)  # the CPU generator is restored, the CUDA states dropped
