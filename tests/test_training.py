"""The Trainer end to end on small MNIST subsets: outputs, exact resume, checkpoints."""
import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cli.compose import train
from training import checkpoint

pytestmark = pytest.mark.needs_data


def tags(run_dir):
    (event_file,) = (run_dir / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file))
    acc.Reload()
    return acc


def test_smoke_run_writes_every_output(cfg, tmp_path):
    summary = train(cfg("trainer.max_steps=2", "logger.log_every_n_steps=1"), tmp_path)
    assert summary["global_step"] == 2 and summary["finished"]
    record, test = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert set(record) >= {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time"}
    assert set(test) >= {"epoch", "test_loss", "test_acc", "test_loss_last", "test_acc_last"}
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert set(saved) >= {"params", "best_val_acc", "final_val_acc", "test_acc", "epochs", "train_time",
                          "train_images_per_sec"}
    assert (tmp_path / "checkpoints" / "last.pt").is_file() and (tmp_path / "checkpoints" / "best.pt").is_file()
    acc = tags(tmp_path)
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/acc", "lr", "watch/grad_norm", "val/loss", "val/acc", "test/acc",
            "test/acc_last"} <= scalars
    assert [e.step for e in acc.Scalars("train/loss")] == [0, 1]


def test_mlp_learns_mnist_subset(cfg, tmp_path):
    summary = train(cfg("data.train_subset=4096", "data.val_subset=1000", "trainer.epochs=2"), tmp_path)
    assert summary["final_val_acc"] > 0.85


def test_val_every_n_epochs_evaluates_every_nth_and_the_last_epoch(cfg, tmp_path):
    summary = train(cfg("trainer.epochs=5", "trainer.val_every_n_epochs=2", "data.train_subset=128"), tmp_path)
    records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "val_acc" in r] == [2, 4, 5]
    assert all("val_loss" not in r for r in records if r["epoch"] in (1, 3))
    assert summary["final_val_acc"] == records[-2]["val_acc"]
    assert summary["best_val_acc"] == max(r["val_acc"] for r in records if "val_acc" in r)
    # at the index of the epoch's last step (the first step is 0), beside that step's train/loss
    val_steps = [r["global_step"] - 1 for r in records if "val_acc" in r]
    assert [e.step for e in tags(tmp_path).Scalars("val/acc")] == val_steps


def weights(model_state):
    return torch.cat([v.flatten().double() for v in model_state.values()])


@pytest.mark.parametrize("overrides", [
    ("model=mlp", "model.dropout=0.2", "optimizer=sgd"),
    ("model=cnn", "data.train_subset=256", "trainer.precision=bf16", "data.crop_padding=2", "data.flip=true"),
])
def test_resume_after_one_epoch_equals_two_straight(cfg, tmp_path, overrides):
    straight = cfg("trainer.epochs=2", *overrides)
    train(straight, tmp_path / "straight")
    first = cfg("trainer.epochs=2", "trainer.keep_last_k=3", *overrides)
    from cli.compose import build_trainer
    trainer = build_trainer(first, tmp_path / "resumed")
    steps_per_epoch = len(trainer.data.train)
    trainer.fit(stop_after_steps=steps_per_epoch)
    resumed = cfg("trainer.epochs=2", "trainer.resume=auto", *overrides)
    train(resumed, tmp_path / "resumed")
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 2 * steps_per_epoch
    assert torch.equal(weights(a["model"]), weights(b["model"]))
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [(json.loads(l)["epoch"], "test_acc" in l) for l in lines] == [(1, False), (2, False), (2, True)]


def test_mid_epoch_checkpoint_resumes_exactly(cfg, tmp_path):
    from cli.compose import build_trainer
    overrides = ("trainer.epochs=1", "trainer.checkpoint_every_n_steps=3", "data.crop_padding=2")
    train(cfg(*overrides), tmp_path / "straight")
    trainer = build_trainer(cfg(*overrides), tmp_path / "resumed")
    trainer.fit(stop_after_steps=5)
    state = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert (state["step_in_epoch"], state["global_step"]) == (5, 5)
    train(cfg(*overrides, "trainer.resume=auto"), tmp_path / "resumed")
    a = checkpoint.load(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt")
    assert torch.equal(weights(a["model"]), weights(b["model"]))
    ma = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    mb = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    for key in ("train_loss", "val_acc", "test_acc"):  # epoch record, then the test record
        assert [json.loads(l).get(key) for l in ma] == [json.loads(l).get(key) for l in mb]


def test_foreign_and_torn_checkpoints_are_refused(cfg, tmp_path):
    train(cfg("trainer.max_steps=1"), tmp_path / "mlp")
    last = tmp_path / "mlp" / "checkpoints" / "last.pt"
    with pytest.raises(checkpoint.CheckpointError, match="different model"):
        train(cfg("model=cnn", f"trainer.resume={last}"), tmp_path / "cnn")
    torn = tmp_path / "torn.pt"
    torn.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(checkpoint.CheckpointError, match="not a readable checkpoint"):
        checkpoint.load(torn)
    before = last.read_bytes()
    with pytest.raises(checkpoint.CheckpointError):
        train(cfg(f"trainer.resume={torn}"), tmp_path / "mlp")
    assert last.read_bytes() == before


@pytest.mark.slow
def test_resnet20_one_epoch_on_a_cifar_folder_subset(cfg, tmp_path):
    from conftest import CIFAR_FOLDER
    summary = train(cfg("data=cifar10_folder", f"data.root={CIFAR_FOLDER}", "model=resnet20",
                        "data.train_subset=10000", "data.val_subset=null", "data.batch_size=128"), tmp_path)
    assert summary["finished"] and summary["global_step"] == 10000 // 128
    assert summary["final_val_acc"] > 0.2  # one epoch on 10k images: well above chance (0.1)
