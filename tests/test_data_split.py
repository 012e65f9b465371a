"""The validation split: held out of the training set, class-stratified, fixed; the test set kept apart and
scored once at the end; a resume keeps the split and refuses another."""
import json
import shutil

import pytest
import torch

import data
from data import sources
from training import checkpoint
from cli.compose import build_trainer, train

from conftest import read_mnist_once

SYNTHETIC = dict(source="marked", root="unused", num_classes=10, in_channels=1, image_size=4, batch_size=8)


def marked_source(root, train, download=False):
    """Images whose pixels carry their identity: pixel (0, 0) is 0 for a training image and 255 for a test image,
    pixels (0, 1)-(0, 2) the index; labels 0-9 in unequal numbers (class c holds 10 + 3c training images)."""
    labels = torch.cat([torch.full((10 + 3 * c if train else 20,), c) for c in range(10)])
    images = torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = 0 if train else 255
    index = torch.arange(len(labels))
    images[:, 0, 0, 1], images[:, 0, 0, 2] = index // 256, index % 256
    return images, labels


@pytest.fixture
def marked(monkeypatch):
    monkeypatch.setitem(sources.SOURCES, "marked", marked_source)


def identities(loader) -> set[int]:
    return set((loader.images[:, 0, 0, 1].long() * 256 + loader.images[:, 0, 0, 2].long()).tolist())


@pytest.mark.parametrize("subsets", [{}, {"train_subset": 50, "val_subset": 10, "test_subset": 30}])
def test_no_test_image_in_train_or_val_and_train_val_partition_the_training_set(marked, subsets):
    split = data.build(**SYNTHETIC, val_split=40, **subsets)
    assert (split.train.images[:, 0, 0, 0] == 0).all() and (split.val.images[:, 0, 0, 0] == 0).all()
    assert (split.test.images[:, 0, 0, 0] == 255).all()
    assert not identities(split.train) & identities(split.val)
    if not subsets:
        assert identities(split.train) | identities(split.val) == set(range(235))  # 10 classes, 10 + 3c each
        assert len(split.val.labels) == 40 and len(split.test.labels) == 200


def test_split_is_stratified_fixed_and_independent_of_the_run_seed(marked):
    a, b = data.build(**SYNTHETIC, val_split=47, seed=0), data.build(**SYNTHETIC, val_split=47, seed=5)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.images, b.train.images)
    counts = torch.bincount(a.val.labels, minlength=10).double()
    share = torch.tensor([10 + 3 * c for c in range(10)]).double() * 47 / 235  # each class's exact share
    assert counts.sum() == 47 and ((counts - share).abs() < 1).all()


def test_val_split_zero_has_no_val_and_every_training_image_trains(marked):
    split = data.build(**SYNTHETIC, val_split=0)
    assert split.val is None and identities(split.train) == set(range(235))


@pytest.mark.parametrize("n", [-1, 235])
def test_val_split_out_of_range_names_the_key(marked, n):
    with pytest.raises(ValueError, match=f"data.val_split={n} is out of range"):
        data.build(**SYNTHETIC, val_split=n)


mnist_once = pytest.fixture(scope="module")(read_mnist_once)


@pytest.mark.needs_data
def test_mnist_default_split_is_55k_5k_stratified(mnist_once, cfg, tmp_path):
    split = build_trainer(cfg("data.train_subset=null", "data.val_subset=null", "data.test_subset=null",
                              "logger=none"), tmp_path).data
    assert (split.train.num_examples, split.val.num_examples, split.test.num_examples) == (55000, 5000, 10000)
    full = torch.bincount(torch.cat([split.train.labels, split.val.labels]))
    assert (torch.bincount(split.val.labels) - full * 5000 / 60000).abs().max() < 1


@pytest.mark.needs_data
def test_test_set_scored_once_at_the_end_on_the_best_and_last_weights(mnist_once, cfg, tmp_path):
    summary = train(cfg("trainer.epochs=4", "optimizer=momentum", "optimizer.lr=0.3", "scheduler=constant"),
                    tmp_path)  # a large LR on 512 images: val accuracy goes up and down
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if "test_acc" in r] == records[-1:]  # one test record, the last line
    assert all(not any(k.startswith("test") for k in r) for r in records[:-1])
    best = checkpoint.load(tmp_path / "checkpoints" / "best.pt")
    assert summary["best_epoch"] == best["epoch"] and summary["best_val_acc"] == best["best_val_acc"]
    trainer = build_trainer(cfg("logger=none"), tmp_path / "again")
    trainer.model.load_state_dict(best["model"])
    assert trainer.evaluate(trainer.data.test) == {"loss": summary["test_loss"], "acc": summary["test_acc"]}
    trainer.model.load_state_dict(checkpoint.load(tmp_path / "checkpoints" / "last.pt")["model"])
    assert trainer.evaluate(trainer.data.test) == {"loss": summary["test_loss_last"], "acc": summary["test_acc_last"]}
    assert summary["selected_on"].startswith("val")


@pytest.mark.needs_data
def test_val_split_zero_selects_nothing_and_says_so(mnist_once, cfg, tmp_path):
    summary = train(cfg("data.val_split=0"), tmp_path)
    assert summary["best_val_acc"] is None and summary["test_acc"] == summary["test_acc_last"]
    assert "nothing was chosen" in summary["selected_on"]
    assert not (tmp_path / "checkpoints" / "best.pt").exists()


@pytest.mark.needs_data
def test_resume_keeps_the_split_and_refuses_another(mnist_once, cfg, tmp_path):
    first = build_trainer(cfg("trainer.epochs=2", "logger=none"), tmp_path)
    first.fit(stop_after_steps=3)
    last = tmp_path / "checkpoints" / "last.pt"
    again = build_trainer(cfg("trainer.epochs=2", "logger=none", f"trainer.resume={last}"), tmp_path)
    again.resume(last)
    assert torch.equal(again.data.val.images, first.data.val.images)
    assert torch.equal(again.data.train.images, first.data.train.images)
    other = build_trainer(cfg("trainer.epochs=2", "logger=none", "data.val_split=1000"), tmp_path)
    with pytest.raises(checkpoint.CheckpointError, match="data.val_split=5000"):
        other.resume(last)


@pytest.mark.needs_data
def test_test_acc_scores_best_pt_when_it_is_not_the_last_checkpoint(mnist_once, cfg, tmp_path):
    trainer = build_trainer(cfg("trainer.epochs=2", "trainer.keep_last_k=2", "logger=none"), tmp_path)
    trainer.fit()
    first, last = sorted((tmp_path / "checkpoints").glob("step-*.pt"))  # after epoch 1 and epoch 2
    (tmp_path / "checkpoints" / "best.pt").unlink()
    shutil.copy(first, tmp_path / "checkpoints" / "best.pt")  # as if epoch 1 had the best val accuracy
    scores = trainer.test()
    assert all(torch.equal(v, w) for v, w in zip(trainer.model.state_dict().values(),
                                                 checkpoint.load(last)["model"].values()))  # the last weights kept
    trainer.model.load_state_dict(checkpoint.load(first)["model"])
    assert {"loss": scores["test_loss"], "acc": scores["test_acc"]} == trainer.evaluate(trainer.data.test)
    assert scores["best_epoch"] == 1 and scores["test_loss"] != scores["test_loss_last"]
    trainer.model.load_state_dict(checkpoint.load(last)["model"])
    assert {"loss": scores["test_loss_last"], "acc": scores["test_acc_last"]} == trainer.evaluate(trainer.data.test)
