"""Every option of every config group composes and instantiates; the groups the README says are commented are."""
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import optimizers
from cli.validate import validate
from conftest import CONFIG_DIR, REPO, compose_cfg
from models import MLP


def options(group):
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def fully_commented_groups() -> list[str]:
    """The groups of the README's sentence "In `configs/trainer/`, `optimizer/`, ... every value carries a comment"."""
    claim = re.search(r"In (`configs/.*?) every value carries a comment", (REPO / "README.md").read_text(), re.S)
    return re.findall(r"`(?:configs/)?(\w+)/`", claim.group(1))


def test_the_readme_names_the_fully_commented_groups():
    assert fully_commented_groups() == ["trainer", "optimizer", "scheduler", "sanity", "monitor"]


@pytest.mark.parametrize("path", [f"{g}/{name}.yaml" for g in fully_commented_groups() for name in options(g)])
def test_every_value_of_those_groups_carries_a_comment(path):
    """A header comment first, then every line that sets a key (or opens a section) has its own comment; only
    ``_target_``, which names the class, goes without."""
    lines = (Path(CONFIG_DIR) / path).read_text().splitlines()
    assert lines[0].startswith("# ")
    values = [line for line in lines if line.strip() and not line.lstrip().startswith(("#", "_target_:"))]
    assert values and all("#" in line for line in values), [line for line in values if "#" not in line]


@pytest.mark.parametrize("name", options("optimizer"))
def test_optimizer_configs_build_our_classes_and_take_a_step(name):
    cfg = compose_cfg(f"optimizer={name}")
    torch.manual_seed(0)
    model = MLP(in_channels=1, image_size=4, num_classes=3)
    opt = optimizers.build(cfg.optimizer, model)
    assert type(opt).__module__.startswith("optimizers.")
    before = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 1, 4, 4), torch.randint(0, 3, (8,))

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


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
def test_experiments_compose_validate_and_build_their_model(name):
    cfg = compose_cfg(f"experiment={name}", tiny=False)
    validate(cfg)
    model = instantiate(cfg.model)
    x = torch.zeros(2, cfg.data.in_channels, cfg.data.image_size, cfg.data.image_size)
    assert model(x).shape == (2, cfg.data.num_classes)


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
