"""A single run's directory, and so its TensorBoard run name, says what ran: the experiment, or model_optimizer."""
import re

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

from cli.report import run_name
from conftest import CONFIG_DIR


def run_dir(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # what Hydra does before it resolves hydra.run.dir
    try:
        return cfg.hydra.run.dir
    finally:
        HydraConfig.instance().cfg = None  # later tests run outside Hydra


def test_a_run_is_named_by_its_model_and_optimizer_or_its_experiment():
    assert re.fullmatch(r"outputs/\d{4}-\d\d-\d\d/\d\d-\d\d-\d\d_resnet20_adam", run_dir("model=resnet20",
                                                                                      "optimizer=adam"))
    assert run_dir("experiment=resnet56_cifar10").endswith("_resnet56_cifar10")
    assert run_name(None, "mlp", "momentum") == "mlp_momentum"
