"""A misspelt key is told the nearest existing one ("did you mean optimizer.lr?"), never a '+' that cannot work;
a '+'-added key that no component takes is one line too."""
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from cli.compose import build_trainer
from cli.errors import one_line
from conftest import CONFIG_DIR, DATA_ROOT, REPO, compose_cfg
from utils.errors import ConfigError
from utils.suggest import nearest


@pytest.mark.parametrize("key, candidates, expected", [
    ("optimizer.learning_rate", ["optimizer.lr", "optimizer.momentum"], ["optimizer.lr"]),  # initials
    ("optimizer.wd", ["optimizer.lr", "optimizer.weight_decay"], ["optimizer.weight_decay"]),
    ("optimizer.lr", ["optimizer.k", "optimizer.base.lr"], ["optimizer.base.lr"]),  # the same last part, deeper
    ("trainer.epoch", ["trainer.epochs", "trainer.device"], ["trainer.epochs"]),  # difflib
    ("trainer.zzz", ["trainer.epochs", "trainer.device"], []),
])
def test_nearest_keys(key, candidates, expected):
    assert nearest(key, candidates) == expected


def composition_error(*overrides) -> str:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        with pytest.raises(Exception) as failed:
            compose("train", overrides=list(overrides))
    return one_line(failed.value)


@pytest.mark.parametrize("overrides, message", [
    (["optimizer.learning_rate=0.1"], "optimizer.learning_rate is not a key of optimizer: did you mean optimizer.lr?"),
    (["optimizer=lookahead", "optimizer.lr=0.1"], "optimizer.lr is not a key of optimizer: did you mean "
                                                  "optimizer.base.lr?"),
    (["epochs=3"], "epochs is not a key of the config: did you mean trainer.epochs?"),
    (["optimizer.foo=1"], "optimizer.foo is not a key of optimizer (its keys: lr, momentum, dampening"),
])
def test_an_unknown_key_is_told_the_nearest_one_and_no_plus(overrides, message):
    line = composition_error(*overrides)
    assert line.startswith(message) and "+" not in line, line


def test_plus_is_advised_where_the_component_takes_the_key(tmp_path):
    line = composition_error("scheduler=cosine", "scheduler.warmup_epochs=2")
    assert line.endswith("(optimizers.schedules.CosineSchedule takes it: add it with +scheduler.warmup_epochs=<value>)")
    cfg = compose_cfg("scheduler=cosine", "+scheduler.warmup_epochs=0.5", "trainer.epochs=2")
    assert build_trainer(cfg, tmp_path).scheduler.warmup_steps == 4  # 8 steps an epoch


@pytest.mark.parametrize("overrides, message", [
    (["+optimizer.learning_rate=0.1"], "optimizer.learning_rate=0.1 is invalid: did you mean optimizer.lr? allowed "
                                       "only the keys lr, momentum"),
    (["optimizer=lookahead", "+optimizer.lr=0.1"], "did you mean optimizer.base.lr?"),
    (["+scheduler.gama=0.5", "scheduler=step"], "scheduler.gama=0.5 is invalid: did you mean scheduler.gamma?"),
])
def test_a_plus_key_no_component_takes_is_refused_by_name(overrides, message, tmp_path):
    with pytest.raises(ConfigError) as refused:
        build_trainer(compose_cfg(*overrides), tmp_path)
    assert message in str(refused.value)


def test_through_the_command_line_it_is_one_line_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "+optimizer.learning_rate=0.1", f"data.root={DATA_ROOT}",
                             f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip() == ("error: optimizer.learning_rate=0.1 is invalid: did you mean optimizer.lr? "
                                     "allowed only the keys lr, momentum, dampening, weight_decay, nesterov, maximize, "
                                     "foreach, lr_in_velocity, decay_norm_and_bias")
