"""Training a finished run further: a longer horizon where the schedule allows it, a refusal where it does not, a
word when there is nothing left to train; trainer.init_from starts a new run from a checkpoint's weights."""
import pytest
import torch

from cli.compose import train
from cli.validate import validate
from conftest import compose_cfg, read_mnist_once
from utils.errors import ConfigError

pytestmark = pytest.mark.needs_data
mnist_once = pytest.fixture(autouse=True, scope="module")(read_mnist_once)
RUN = ("logger=none", "optimizer=momentum", "data.train_subset=256", "data.batch_size=64", "data.val_subset=128",
       "data.test_subset=128")


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_a_finished_step_schedule_run_goes_on_to_where_a_longer_run_ends(tmp_path, caplog):
    step = ("scheduler=step", "scheduler.step_size_epochs=1")  # the LR drops after epoch 1, in both runs
    train(compose_cfg(*RUN, *step, "trainer.epochs=1"), tmp_path / "a")
    with caplog.at_level("INFO"):
        longer = train(compose_cfg(*RUN, *step, "trainer.epochs=2", "trainer.resume=auto"), tmp_path / "a")
    assert "every step keeps the LR it had" in caplog.text
    straight = train(compose_cfg(*RUN, *step, "trainer.epochs=2"), tmp_path / "b")
    assert (longer["epochs"], longer["global_step"]) == (2, 8) and longer["test_acc"] == straight["test_acc"]
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_finished_cosine_run_is_not_stretched(tmp_path):
    train(compose_cfg(*RUN, "scheduler=cosine", "trainer.epochs=1"), tmp_path)
    before = (tmp_path / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(ConfigError) as refused:
        train(compose_cfg(*RUN, "scheduler=cosine", "trainer.epochs=2", "trainer.resume=auto"), tmp_path)
    message = str(refused.value)
    assert "changed from 4 to 8 steps" in message
    assert "the LR would jump from 0.0146 (step 3) to 0.05 (step 4)" in message
    assert "trainer.init_from=" in message and (tmp_path / "checkpoints" / "last.pt").read_bytes() == before


def test_resuming_a_finished_run_says_so(tmp_path, caplog):
    train(compose_cfg(*RUN, "trainer.epochs=1"), tmp_path)
    with caplog.at_level("WARNING"):
        summary = train(compose_cfg(*RUN, "trainer.epochs=1", "trainer.resume=auto"), tmp_path)
    assert "holds a finished run (epoch 1, step 4; trainer.epochs=1" in caplog.text and "nothing left" in caplog.text
    assert summary["global_step"] == 4


def test_init_from_starts_a_new_run_from_the_weights(tmp_path, caplog):
    """Fine-tuning: the checkpoint's weights, a fresh optimizer and schedule (so the full 4 steps and the base LR),
    and the sanity checks that hold for trained weights (the ln C and loss-fall checks are for a fresh model)."""
    trained = train(compose_cfg(*RUN, "trainer.epochs=3"), tmp_path / "a")
    fresh = train(compose_cfg(*RUN, "trainer.epochs=1"), tmp_path / "fresh")
    source = tmp_path / "a" / "checkpoints" / "last.pt"
    with caplog.at_level("INFO"):
        tuned = train(compose_cfg(*RUN, "trainer.epochs=1", "trainer.sanity=run", f"trainer.init_from={source}"),
                      tmp_path / "tuned")
    assert f"weights from {source} (its epoch 3, step 12); a fresh optimizer and schedule" in caplog.text
    sanity = (tmp_path / "tuned" / "sanity.txt").read_text()
    assert "overfit" in sanity and "init_loss" not in sanity and "loss_decrease" not in sanity
    assert tuned["global_step"] == 4 and tuned["final_val_acc"] > fresh["final_val_acc"]
    assert trained["final_val_acc"] > fresh["final_val_acc"]


def test_init_from_a_missing_file_is_refused_by_name():
    with pytest.raises(ConfigError, match="trainer.init_from='nowhere.pt' is invalid: allowed null, or the path"):
        validate(compose_cfg(*RUN, "trainer.init_from=nowhere.pt"))
