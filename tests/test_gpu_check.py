"""benchmarks/gpu_check.py: its --dry-run runs the same checks on the CPU, so the script a maintainer runs on a GPU
works up to the device; a check that finds a fault fails the run."""
import importlib.util

import pytest
import torch

from conftest import DATA_ROOT, REPO

pytestmark = pytest.mark.needs_data

spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)

FAST = ["placement", "cuda_n", "sync_budget", "on_nan_skip", "determinism"]


def dry_run(capsys, *checks: str) -> tuple[int, str]:
    code = gpu_check.main(["--dry-run", "--data-root", str(DATA_ROOT), "--only", *checks])
    return code, capsys.readouterr().out


def test_dry_run_passes_and_says_what_it_measured(capsys):
    code, out = dry_run(capsys, *FAST)
    assert code == 0, out
    assert "PASS placement: " in out and " on cpu" in out
    assert "SKIP cuda_n: needs 2 GPUs" in out
    assert "PASS sync_budget: 0 synchronisations in the 21 steps between flushes" in out
    assert "PASS on_nan_skip: step 3 (NaN loss) skipped, 12 steps done, weights finite" in out
    assert "PASS determinism: " in out
    assert out.strip().endswith("4 passed, 0 failed, 1 skipped")


def test_a_sync_in_the_step_fails_the_check(capsys, monkeypatch):
    """A hidden .item() per step, as a progress bar's formatting would do, is caught and fails the run."""
    from training.meters import PendingSteps
    add = PendingSteps.add
    monkeypatch.setattr(PendingSteps, "add", lambda self, step, lr, result, correct: (result.loss.item(),
                                                                                      add(self, step, lr, result,
                                                                                          correct)))
    code, out = dry_run(capsys, "sync_budget")
    assert code == 1 and "FAIL sync_budget: AssertionError: syncs between flushes: {1: ['item']" in out


def test_without_a_gpu_it_asks_for_one_or_a_dry_run(capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as stop:
        gpu_check.main([])
    assert stop.value.code == 2 and "no GPU visible: run on a GPU machine, or with --dry-run" in capsys.readouterr().err


@pytest.mark.slow
def test_every_check_passes_in_a_dry_run(capsys):
    code, out = dry_run(capsys, *gpu_check.CHECKS)
    assert code == 0, out
    assert out.strip().endswith(f"{len(gpu_check.CHECKS) - 1} passed, 0 failed, 1 skipped")
