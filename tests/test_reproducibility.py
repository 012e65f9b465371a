"""Reproducible runs: with ``trainer.deterministic=true`` two runs of the same seed end with identical metrics,
weights, optimizer state and RNGs on the CPU; another seed ends elsewhere (so the comparison can fail)."""
import pytest
import torch

from test_resume import assert_same, final_state, metrics
from training.run import train
from utils.seed import seed_everything

RUNS = {
    "mlp, dropout, crops": ("model.dropout=0.3", "data.crop_padding=2", "optimizer=adam", "scheduler=cosine"),
    "cnn, flips": ("model=cnn", "data.train_subset=128", "data.flip=true", "optimizer=momentum"),
}


@pytest.fixture(autouse=True)
def restore_determinism():
    """Deterministic mode is process-wide: leave it as this test found it."""
    before = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic
    yield
    torch.use_deterministic_algorithms(before[0])
    torch.backends.cudnn.deterministic = before[1]


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
    seed_everything(0, deterministic=False)  # a later run in the same process must not inherit it
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
