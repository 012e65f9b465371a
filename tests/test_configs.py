"""Every option of every config group composes and instantiates."""
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import optimizers
from conftest import CONFIG_DIR, compose_cfg
from models import MLP


def options(group):
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizer_configs_build_our_classes(name):
    cfg = compose_cfg(f"optimizer={name}")
    model = MLP(in_channels=1, image_size=4, num_classes=3)
    opt = optimizers.build(cfg.optimizer, model)
    assert type(opt).__module__.startswith("optimizers.")
    assert cfg.optimizer._partial_


@pytest.mark.parametrize("name", options("scheduler"))
def test_scheduler_configs_build(name):
    cfg = compose_cfg(f"scheduler={name}")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = instantiate(cfg.scheduler)(opt, steps_per_epoch=10, total_steps=100)
    schedule.step_update(0)
    assert 0 < opt.param_groups[0]["lr"] <= 0.1


@pytest.mark.parametrize("name", options("logger"))
def test_logger_configs_build(name, tmp_path):
    logger = instantiate(compose_cfg(f"logger={name}").logger)(run_dir=tmp_path)
    logger.open()
    logger.scalar("x", 1.0, 0)
    logger.close()
    assert any((tmp_path / "tb").glob("events.*")) == (name == "tensorboard")


@pytest.mark.needs_data
def test_mnist_data_config_builds_loaders():
    data = instantiate(compose_cfg("data=mnist").data)
    x, y = next(iter(data.train))
    assert x.shape == (64, 1, 28, 28) and y.shape == (64,) and data.train.num_examples == 512


@pytest.mark.parametrize("name", options("experiment"))
def test_experiments_compose(name):
    cfg = compose_cfg(f"experiment={name}", tiny=False)
    assert cfg.model._target_ and cfg.optimizer._target_


def test_resnet56_experiment_is_the_papers_recipe():
    cfg = compose_cfg("experiment=resnet56_cifar10", tiny=False)
    assert (cfg.model.depth, cfg.data.batch_size, cfg.optimizer.lr, cfg.optimizer.momentum) == (56, 128, 0.1, 0.9)
    assert cfg.optimizer.weight_decay == 1e-4 and cfg.trainer.max_steps == 64000
    assert list(cfg.scheduler.milestones) == [32000, 48000] and cfg.scheduler.milestones_unit == "step"
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = instantiate(cfg.scheduler)(opt, steps_per_epoch=391, total_steps=64000)
    assert [round(schedule.lr_at(s)[0], 6) for s in (0, 31999, 32000, 48000, 63999)] == [0.1, 0.1, 0.01, 0.001, 0.001]


def test_resnet110_experiment_warms_up_at_a_tenth():
    cfg = compose_cfg("experiment=resnet110_cifar10", tiny=False)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = instantiate(cfg.scheduler)(opt, steps_per_epoch=391, total_steps=64000)
    assert cfg.model.depth == 110
    assert [round(schedule.lr_at(s)[0], 6) for s in (0, 399, 400, 32000)] == [0.01, 0.01, 0.1, 0.01]


def test_model_reads_the_data_shape_by_interpolation():
    cfg = compose_cfg("data=cifar10", "model=cnn")
    assert (cfg.model.in_channels, cfg.model.num_classes) == (3, 10)
