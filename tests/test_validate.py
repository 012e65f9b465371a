"""Config validation: any composed config is either valid, and then its model, optimizer and schedule build,
or refused with one line naming the key, the value and what is allowed. Hypothesis throws random values
(wrong types, out of range, NaN, lists, strings) at random keys of random group choices."""
import functools
import math

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

import optimizers
from conftest import REPO, compose_cfg
from cli.errors import one_line
from cli.compose import build_trainer
from cli.validate import check_output_dir, validate
from utils.errors import ConfigError

MODELS = ["mlp", "cnn"]  # ResNets take the same model keys; their size makes each example slow
OPTIMIZERS = ["sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw", "radam", "lookahead", "lbfgs"]
SCHEDULES = ["constant", "step", "multistep", "cosine", "warmup_step", "warmup_cosine", "onecycle"]
SECTIONS = ("trainer", "data", "model", "optimizer", "scheduler", "logger")
NOT_FUZZED = {"data.root", "data.source",  # where data lives is checked when it is read
              "data.num_classes", "data.in_channels", "data.image_size"}  # checked against the data; sizes


@functools.cache
def base_config(model: str, optimizer: str, schedule: str):
    """The shipped defaults (10 epochs: the warmup schedules need more than 1), data.root an existing folder."""
    return compose_cfg(f"model={model}", f"optimizer={optimizer}", f"scheduler={schedule}", f"data.root={REPO}",
                       tiny=False)


def leaves(cfg) -> list[str]:
    """Dotted keys of every plain value under SECTIONS (no _target_, no interpolations)."""
    found = []

    def walk(node, prefix):
        for key in node:
            path = f"{prefix}.{key}"
            if OmegaConf.is_interpolation(node, key) or str(key).startswith("_") or path in NOT_FUZZED:
                continue
            if OmegaConf.is_dict(node[key]):
                walk(node[key], path)
            else:
                found.append(path)
    for section in SECTIONS:
        walk(cfg[section], section)
    return found


def neighbours(value):
    """Values near the current one: its sign flipped, scaled, at the edges of common ranges."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return st.just(value)
    return st.sampled_from([value, -value, value * 2, value / 2, value + 1, 0, 1, 1.0, 0.999, -1e-9])


SCALARS = st.one_of(st.integers(-3, 100), st.just(2**64), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.none(),
                    st.sampled_from(["abc", "", "auto", "fp16", "norm", "cos", "epoch", "strong_wolfe", "relu"]))
LISTS = st.lists(st.one_of(st.integers(-2, 64), st.floats(-1, 2), st.just("x")), max_size=3)


@st.composite
def configs(draw):
    cfg = base_config(draw(st.sampled_from(MODELS)), draw(st.sampled_from(OPTIMIZERS)),
                      draw(st.sampled_from(SCHEDULES))).copy()
    keys = draw(st.lists(st.sampled_from(leaves(cfg)), min_size=1, max_size=3, unique=True))
    for key in keys:
        current = OmegaConf.select(cfg, key)
        value = draw(st.one_of(neighbours(current), SCALARS, LISTS))
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg, keys


def build(cfg):
    """What train.py builds before any data: model, optimizer, schedule (100 steps per epoch)."""
    model = instantiate(cfg.model)
    optimizer = optimizers.build(cfg.optimizer, model)
    total = min(cfg.trainer.epochs * 100, cfg.trainer.max_steps or math.inf)
    instantiate(cfg.scheduler)(optimizer, steps_per_epoch=100, total_steps=total)


@settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_every_config_is_valid_or_refused_in_one_line(example):
    cfg, changed = example
    try:
        validate(cfg)
    except ConfigError as e:
        message = str(e)
        assert "\n" not in message and "is invalid" in message and "allowed" in message, message
        assert any(key in message for key in changed), (changed, message)
        return
    try:
        build(cfg)
    except (ValueError, InstantiationException) as e:
        # Left to the constructors: model names (activation, init), and the schedule against the run's length
        message = one_line(e)
        assert "\n" not in message, (changed, message)
        run_length = any(key.startswith("scheduler.") or key in ("trainer.epochs", "trainer.max_steps")
                         for key in changed)
        assert run_length or any(f"{key}=" in message for key in changed), (changed, message)


@pytest.mark.parametrize("model,optimizer,schedule", [
    *(("mlp", name, "constant") for name in OPTIMIZERS), *(("mlp", "sgd", name) for name in SCHEDULES),
    *((name, "sgd", "constant") for name in ["deep_mlp", "cnn", "resnet20", "resnet32", "resnet44", "resnet56",
                                            "resnet110"])])
def test_every_shipped_option_is_valid(model, optimizer, schedule):
    validate(base_config(model, optimizer, schedule))
    if model == "mlp":
        build(base_config(model, optimizer, schedule))


@pytest.mark.parametrize("override,message", [
    ("trainer.epochs=abc", "trainer.epochs='abc' is invalid: allowed an integer >= 1"),
    ("trainer.epochs=0", "trainer.epochs=0 is invalid: allowed an integer >= 1"),
    ("trainer.val_every_n_epochs=0", "trainer.val_every_n_epochs=0 is invalid: allowed an integer >= 1"),
    ("optimizer.lr=-0.1", "optimizer.lr=-0.1 is invalid: allowed a number >= 0"),
    ("optimizer.momentum=1.0", "optimizer.momentum=1.0 is invalid: allowed a number in [0, 1)"),
    ("optimizer.betas=[0.9,1.0]", "optimizer.betas=[0.9, 1.0] is invalid: allowed a list of 2 items, each a number in [0, 1)"),
    ("optimizer.betas=[0.9]", "optimizer.betas=[0.9] is invalid: allowed a list of 2 items"),
    ("trainer.clip.max=0", "trainer.clip.max=0 is invalid: allowed a number > 0"),
    ("trainer.clip.max=-1.5", "trainer.clip.max=-1.5 is invalid: allowed a number > 0"),
    ("trainer.precision=fp8", "trainer.precision='fp8' is invalid: allowed one of auto, fp32, bf16, fp16"),
    ("optimizer.base.lr=-1", "optimizer.base.lr=-1 is invalid: allowed a number >= 0"),
    ("optimizer.nesterov=true", "optimizer.nesterov=True is invalid with optimizer.momentum=0.0"),
    ("trainer.loss_scale=1024", "trainer.loss_scale=1024 is invalid with trainer.precision='auto'"),
    ("trainer.resume=/no/such.pt", "trainer.resume='/no/such.pt' is invalid: allowed null, auto, or the path of"),
    ("data.root=/no/such/folder", "data.root='/no/such/folder' is invalid: no such folder"),
    ("trainer.epochs=${nope}", "trainer.epochs is invalid (Interpolation key 'nope' not found): allowed a value"),
])
def test_the_issues_examples_name_key_value_and_what_is_allowed(override, message):
    optimizer = {"optimizer.momentum": "momentum", "optimizer.betas": "adam", "optimizer.base": "lookahead"}
    group = next((v for k, v in optimizer.items() if override.startswith(k)), "sgd")
    with pytest.raises(ConfigError) as refused:
        validate(compose_cfg(f"optimizer={group}", override))
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_an_unwritable_output_directory_is_refused(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ConfigError, match=r"^hydra.run.dir='.*a_file/run' is invalid \(Not a directory\): allowed"):
        check_output_dir(tmp_path / "a_file" / "run")
    check_output_dir(tmp_path / "new" / "run")
    assert (tmp_path / "new" / "run").is_dir()


def test_validation_comes_before_any_data_is_read(tmp_path):
    """An empty data root would fail when read; the bad value is reported first."""
    with pytest.raises(ConfigError, match="optimizer.lr=-1"):
        build_trainer(compose_cfg(f"data.root={tmp_path}", "optimizer.lr=-1"), tmp_path / "run")


def test_an_unknown_data_key_is_refused_by_name_before_any_data_is_read(tmp_path):
    """data.build takes no catch-all: a misspelt key is an error naming the keys it has, not silently dropped."""
    with pytest.raises(ConfigError, match=r"^data.batchsize=32 is invalid: did you mean data.batch_size\? allowed "
                                          r"only the keys source, root, "):
        build_trainer(compose_cfg(f"data.root={tmp_path}", "+data.batchsize=32"), tmp_path / "run")
