"""Every shipped experiment, and every option of every group on top of the default job, passes its own sanity
checks on real data (the image-folder CIFAR-10 for conv nets). Slow: minutes per ResNet on a CPU."""
from pathlib import Path

import pytest

from conftest import CONFIG_DIR, DATA_ROOT, compose_cfg
from cli.compose import build_trainer, sanity_check

pytestmark = [pytest.mark.slow, pytest.mark.needs_data]

CONV = {"cnn", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "airbench"}
ELSEWHERE = {"data": {"cifar10": "torchvision's cifar-10-batches-py/ is not here (cifar10_folder is)",
                      "fashion_mnist": "FashionMNIST/raw/ is not here"},
             "model": {"resnet": "the base the resnet<depth> configs extend (model.depth is theirs to give)"}}
# Experiments whose lesson is a failed check: they fail exactly these, and warn (trainer.sanity=warn) to train on.
LESSONS = {"experiment=gradient_flow": {"overfit", "gradient_flow"}}  # a 20-layer sigmoid MLP: vanishing gradients


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


CASES = [f"experiment={name}" for name in options("experiment")]
CASES += [f"{group}={name}" for group in ("data", "model", "optimizer", "scheduler") for name in options(group)]


@pytest.mark.parametrize("choice", CASES)
def test_sanity_checks_pass(choice, tmp_path):
    group, name = choice.split("=")
    if why := ELSEWHERE.get(group, {}).get(name):
        pytest.skip(why)
    data = ["data=cifar10_folder"] if name in CONV else []
    cfg = compose_cfg(f"paths.data_root={DATA_ROOT}", *data, choice, "data.train_subset=2048", "data.val_subset=null",
                      tiny=False)
    cfg.trainer.device = "cpu"
    report = sanity_check(build_trainer(cfg, tmp_path), cfg)
    print(report.table())
    if lesson := LESSONS.get(choice):
        assert cfg.trainer.sanity == "warn" and {r.name for r in report.failed} == lesson, report.summary()
    else:
        assert report.passed, report.summary()
