import io
import math
import re
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.optim import lr_scheduler as tl

from optimizers.schedules import (ConstantSchedule, CosineSchedule, ExponentialSchedule, MultiStepSchedule,
                                  OneCycleSchedule, PolynomialSchedule, StepSchedule)
from utils.errors import ConfigError

torch.set_num_threads(2)
LRS = (0.1, 0.03)  # two param groups with different base LRs
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "scheduler"


def make_opt(lrs=LRS):
    groups = [{"params": [torch.zeros(1, dtype=torch.float64, requires_grad=True)], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def torch_lrs(opt, sched, n):
    """LR of each group before each of n updates, stepping torch's scheduler once per update."""
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def ours_lrs(sched, n):
    return [sched.lr_at(t) for t in range(n)]


def warmup_cosine_torch(o, w, f, t, eta_min):
    return tl.SequentialLR(o, [tl.LinearLR(o, start_factor=f, total_iters=w),
                               tl.CosineAnnealingLR(o, T_max=t - w, eta_min=eta_min)], milestones=[w])


# (id, total steps, our schedule from an optimizer, torch's scheduler from an optimizer)
PARITY = [
    ("step", 120, lambda o: StepSchedule(o, steps_per_epoch=10, total_steps=120, gamma=0.5, step_size_steps=25),
     lambda o: tl.StepLR(o, step_size=25, gamma=0.5)),
    ("step_epochs", 120, lambda o: StepSchedule(o, steps_per_epoch=10, total_steps=120, gamma=0.3,
                                                step_size_epochs=3), lambda o: tl.StepLR(o, step_size=30, gamma=0.3)),
    ("multistep_steps", 150, lambda o: MultiStepSchedule(o, steps_per_epoch=7, total_steps=150, milestones=[40, 90],
                                                         milestones_unit="step", gamma=0.1),
     lambda o: tl.MultiStepLR(o, milestones=[40, 90], gamma=0.1)),
    ("multistep_epochs", 150, lambda o: MultiStepSchedule(o, steps_per_epoch=10, total_steps=150, milestones=[4, 11],
                                                          gamma=0.2), lambda o: tl.MultiStepLR(o, [40, 110], 0.2)),
    ("exponential", 100, lambda o: ExponentialSchedule(o, steps_per_epoch=1, total_steps=100, gamma=0.97),
     lambda o: tl.ExponentialLR(o, gamma=0.97)),
    ("polynomial", 100, lambda o: PolynomialSchedule(o, steps_per_epoch=10, total_steps=100, power=2.0),
     lambda o: tl.PolynomialLR(o, total_iters=100, power=2.0)),
    ("cosine", 200, lambda o: CosineSchedule(o, steps_per_epoch=10, total_steps=200, min_lr=1e-3),
     lambda o: tl.CosineAnnealingLR(o, T_max=200, eta_min=1e-3)),
    ("warmup_cosine", 200, lambda o: CosineSchedule(o, steps_per_epoch=10, total_steps=200, warmup_epochs=2,
                                                    warmup_start_factor=0.1, min_lr=1e-4),
     lambda o: warmup_cosine_torch(o, 20, 0.1, 200, 1e-4)),
    ("onecycle_cos", 200, lambda o: OneCycleSchedule(o, steps_per_epoch=10, total_steps=200, pct_start=0.25),
     lambda o: tl.OneCycleLR(o, max_lr=list(LRS), total_steps=200, pct_start=0.25, cycle_momentum=False)),
    ("onecycle_linear", 97, lambda o: OneCycleSchedule(o, steps_per_epoch=10, total_steps=97, pct_start=0.4,
                                                       div_factor=10.0, final_div_factor=100.0,
                                                       anneal_strategy="linear"),
     lambda o: tl.OneCycleLR(o, max_lr=list(LRS), total_steps=97, pct_start=0.4, div_factor=10.0,
                             final_div_factor=100.0, anneal_strategy="linear", cycle_momentum=False)),
]


@pytest.mark.parametrize("n, ours, theirs", [p[1:] for p in PARITY], ids=[p[0] for p in PARITY])
def test_matches_torch_scheduler_every_step(n, ours, theirs):
    opt = make_opt()
    expected = torch_lrs(opt, theirs(opt), n)
    got = ours_lrs(ours(make_opt()), n)
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), torch.tensor(expected, dtype=torch.float64),
                               atol=1e-12, rtol=0)


def test_resnet110_constant_warmup_then_paper_milestones():
    s = MultiStepSchedule(make_opt((0.1,)), steps_per_epoch=391, total_steps=64000, milestones=[32000, 48000],
                          milestones_unit="step", gamma=0.1, warmup_steps=400, warmup_start_factor=0.1,
                          warmup_mode="constant")
    expected = {0: 0.01, 399: 0.01, 400: 0.1, 31999: 0.1, 32000: 0.01, 47999: 0.01, 48000: 0.001, 63999: 0.001}
    for t, lr in expected.items():
        assert s.lr_at(t) == pytest.approx([lr], rel=1e-12), t


def test_linear_warmup_then_closed_forms():
    w, n, spe, f, m = 15, 100, 5, 0.2, 1e-3
    run = dict(steps_per_epoch=spe, total_steps=n, warmup_epochs=3, warmup_start_factor=f)
    poly = PolynomialSchedule(make_opt(), power=0.5, min_lr=m, **run)
    expo = ExponentialSchedule(make_opt(), gamma=0.8, **run)
    for t in range(n):
        if t < w:
            want = [lr * (f + (1 - f) * t / w) for lr in LRS]
            assert poly.lr_at(t) == pytest.approx(want, abs=1e-15) and expo.lr_at(t) == pytest.approx(want, abs=1e-15)
        else:
            assert poly.lr_at(t) == pytest.approx([m + (lr - m) * (1 - (t - w) / (n - w)) ** 0.5 for lr in LRS],
                                                  abs=1e-15)
            assert expo.lr_at(t) == pytest.approx([lr * 0.8 ** ((t - w) / spe) for lr in LRS], abs=1e-15)


def test_end_values_and_steps_past_the_run():
    cos = CosineSchedule(make_opt(), steps_per_epoch=10, total_steps=50, min_lr=0.01)
    one = OneCycleSchedule(make_opt(), steps_per_epoch=10, total_steps=50, div_factor=20.0, final_div_factor=50.0)
    assert cos.lr_at(50) == cos.lr_at(10_000) == pytest.approx([0.01, 0.01], abs=1e-15)
    assert one.lr_at(49) == one.lr_at(10_000) == pytest.approx([lr / 20 / 50 for lr in LRS], abs=1e-15)
    assert one.lr_at(0) == pytest.approx([lr / 20 for lr in LRS], abs=1e-15)
    assert max(one.lr_at(t)[0] for t in range(50)) == pytest.approx(LRS[0], abs=1e-15)


def test_step_update_writes_each_group():
    opt = make_opt()
    s = CosineSchedule(opt, steps_per_epoch=10, total_steps=100, warmup_steps=10)
    for t in (0, 5, 10, 57, 99):
        s.step_update(t)
        lrs = [g["lr"] for g in opt.param_groups]
        assert lrs == s.lr_at(t)
        assert lrs[0] / lrs[1] == pytest.approx(LRS[0] / LRS[1], rel=1e-12)
    assert [g["initial_lr"] for g in opt.param_groups] == list(LRS)


def test_step_update_fills_tensor_lr_in_place():
    lr = torch.tensor(0.1)
    opt = torch.optim.Adam([torch.zeros(2, requires_grad=True)], lr=lr)
    s = StepSchedule(opt, steps_per_epoch=4, total_steps=20, step_size_steps=8, gamma=0.5)
    s.step_update(9)
    assert opt.param_groups[0]["lr"] is lr and lr.item() == pytest.approx(0.05)


def test_existing_initial_lr_is_the_base():
    opt = make_opt()
    for g, lr in zip(opt.param_groups, LRS):
        g["initial_lr"], g["lr"] = lr, 123.0  # e.g. an optimizer state restored mid-run
    assert ConstantSchedule(opt, steps_per_epoch=1, total_steps=10).lr_at(3) == list(LRS)


SCHEDULES = [
    (ConstantSchedule, dict(warmup_steps=7)),
    (StepSchedule, dict(step_size_epochs=2, gamma=0.5, warmup_steps=5)),
    (MultiStepSchedule, dict(milestones=[3, 6], gamma=0.1, warmup_epochs=1)),
    (ExponentialSchedule, dict(gamma=0.9)),
    (PolynomialSchedule, dict(power=2.0, min_lr=1e-4, warmup_steps=3, warmup_mode="constant")),
    (CosineSchedule, dict(min_lr=1e-3, warmup_epochs=0.5, warmup_start_factor=0.01)),
    (OneCycleSchedule, dict(pct_start=0.2, anneal_strategy="linear")),
]


@pytest.mark.parametrize("cls, kwargs", SCHEDULES, ids=[c.__name__ for c, _ in SCHEDULES])
def test_state_dict_round_trip(cls, kwargs):
    run = dict(steps_per_epoch=10, total_steps=90)
    a = cls(make_opt(), **run, **kwargs)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    opt = make_opt((1.0, 2.0))  # rebuilt with other LRs: the loaded base LRs must win
    b = cls(opt, **run, **kwargs)
    b.load_state_dict(state)
    assert [b.lr_at(t) for t in range(95)] == [a.lr_at(t) for t in range(95)]
    assert [g["initial_lr"] for g in opt.param_groups] == list(LRS)


LENGTH_FREE = {ConstantSchedule, StepSchedule, MultiStepSchedule, ExponentialSchedule}


@pytest.mark.parametrize("cls, kwargs", SCHEDULES, ids=[c.__name__ for c, _ in SCHEDULES])
def test_a_longer_run_continues_where_the_lr_does_not_depend_on_its_length(cls, kwargs, caplog):
    """Resumed with 150 steps instead of 90: the same LR at every step a length-free schedule shares; the others
    (laid out over the run) refuse, saying how far the LR would jump."""
    state = cls(make_opt(), steps_per_epoch=10, total_steps=90, **kwargs).state_dict()
    longer = cls(make_opt(), steps_per_epoch=10, total_steps=150, **kwargs)
    if cls in LENGTH_FREE:
        with caplog.at_level("INFO", logger="optimizers.schedules"):
            longer.load_state_dict(state)
        assert [longer.lr_at(t) for t in range(90)] == [cls(make_opt(), steps_per_epoch=10, total_steps=90,
                                                           **kwargs).lr_at(t) for t in range(90)]
        assert "every step keeps the LR it had" in caplog.text
    else:
        with pytest.raises(ConfigError, match=r"length changed from 90 to 150 steps .* the LR would jump from .* "
                                              r"\(step 89\) to .* \(step 90\); .* trainer.init_from="):
            longer.load_state_dict(state)


def test_fractional_milestones_follow_the_run_and_refuse_a_new_length():
    s = MultiStepSchedule(make_opt(), steps_per_epoch=7, total_steps=200, milestones=[0.5, 0.75],
                          milestones_unit="fraction", gamma=0.1)
    assert s.milestone_steps == [100, 150] and s.lr_at(99) == list(LRS) and s.lr_at(150)[0] == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="from 200 to 400 steps"):
        MultiStepSchedule(make_opt(), steps_per_epoch=7, total_steps=400, milestones=[0.5, 0.75],
                          milestones_unit="fraction").load_state_dict(s.state_dict())


@pytest.mark.parametrize("cls, kwargs, warned", [
    (StepSchedule, dict(step_size_epochs=30), "scheduler.step_size_epochs=30 is at or past the run's end "
                                              "(steps [300]; the run has 100 steps, 10 epochs): the LR never decays"),
    (MultiStepSchedule, dict(milestones=[82, 123]), "scheduler.milestones=[82, 123] is at or past the run's end "
                                                    "(steps [820, 1230]; the run has 100 steps, 10 epochs): the LR"),
    (MultiStepSchedule, dict(milestones=[50, 100], milestones_unit="step"), "the drops at steps [100] never happen"),
    (MultiStepSchedule, dict(milestones=[5, 9]), None),
    (StepSchedule, dict(step_size_steps=99), None),
])
def test_a_drop_past_the_end_of_the_run_is_reported(cls, kwargs, warned, caplog):
    with caplog.at_level("WARNING", logger="optimizers.schedules"):
        cls(make_opt(), **RUN, **kwargs)
    if warned is None:
        assert not caplog.records
    else:
        assert len(caplog.records) == 1 and warned in caplog.text, caplog.text


def test_load_state_dict_rejects_another_shape():
    state = CosineSchedule(make_opt(), steps_per_epoch=10, total_steps=90).state_dict()
    with pytest.raises(ValueError, match="CosineSchedule"):
        PolynomialSchedule(make_opt(), steps_per_epoch=10, total_steps=90).load_state_dict(state)


RUN = dict(steps_per_epoch=10, total_steps=100)
BAD = [
    (ConstantSchedule, dict(steps_per_epoch=0, total_steps=10), "steps_per_epoch=0"),
    (ConstantSchedule, dict(steps_per_epoch=1, total_steps=0), "total_steps=0"),
    (ConstantSchedule, dict(RUN, warmup_steps=-1), "warmup_steps=-1"),
    (ConstantSchedule, dict(RUN, warmup_epochs=-0.5), "warmup_epochs=-0.5"),
    (ConstantSchedule, dict(RUN, warmup_steps=5, warmup_epochs=1), "warmup_epochs=1"),
    (ConstantSchedule, dict(RUN, warmup_steps=100), "warmup_steps=100"),
    (CosineSchedule, dict(RUN, warmup_epochs=12), "warmup_epochs=12"),
    (ConstantSchedule, dict(RUN, warmup_start_factor=1.5), "warmup_start_factor=1.5"),
    (ConstantSchedule, dict(RUN, warmup_mode="cosine"), "warmup_mode='cosine'"),
    (CosineSchedule, dict(RUN, min_lr=0.05), "min_lr=0.05"),  # above the second group's 0.03
    (PolynomialSchedule, dict(RUN, min_lr=-1.0), "min_lr=-1.0"),
    (PolynomialSchedule, dict(RUN, power=0.0), "power=0.0"),
    (StepSchedule, dict(RUN, gamma=0.0, step_size_steps=10), "gamma=0.0"),
    (StepSchedule, dict(RUN, gamma=1.5, step_size_steps=10), "gamma=1.5"),
    (StepSchedule, dict(RUN), "(step_size_epochs, step_size_steps)=(0.0, 0)"),
    (StepSchedule, dict(RUN, step_size_steps=10, step_size_epochs=1), "(step_size_epochs, step_size_steps)=(1, 10)"),
    (StepSchedule, dict(RUN, step_size_steps=10, warmup_steps=20), "step size in steps=10"),
    (ExponentialSchedule, dict(RUN, gamma=-0.1), "gamma=-0.1"),
    (MultiStepSchedule, dict(RUN, milestones=[5, 3]), "milestones=[5, 3]"),
    (MultiStepSchedule, dict(RUN, milestones=[30, 30], milestones_unit="step"), "milestones=[30, 30]"),
    (MultiStepSchedule, dict(RUN, milestones=[0], milestones_unit="step"), "milestones=[0]"),
    (MultiStepSchedule, dict(RUN, milestones=[5], milestones_unit="step", warmup_steps=10), "milestones=[5]"),
    (MultiStepSchedule, dict(RUN, milestones=[5], milestones_unit="iter"), "milestones_unit='iter'"),
    (MultiStepSchedule, dict(RUN, milestones=[5], gamma=0), "gamma=0"),
    (MultiStepSchedule, dict(RUN, milestones=[0.5, 1.5], milestones_unit="fraction"), "milestones=[0.5, 1.5]"),
    (OneCycleSchedule, dict(RUN, pct_start=0.0), "pct_start=0.0"),
    (OneCycleSchedule, dict(RUN, pct_start=1.0), "pct_start=1.0"),
    (OneCycleSchedule, dict(RUN, pct_start=0.005), "pct_start=0.005"),
    (OneCycleSchedule, dict(RUN, warmup_steps=5), "warmup_steps=5"),
    (OneCycleSchedule, dict(RUN, div_factor=0.0), "div_factor=0.0"),
    (OneCycleSchedule, dict(RUN, final_div_factor=-1.0), "final_div_factor=-1.0"),
    (OneCycleSchedule, dict(RUN, anneal_strategy="exp"), "anneal_strategy='exp'"),
]


@pytest.mark.parametrize("cls, kwargs, named", BAD, ids=[b[2] for b in BAD])
def test_bad_arguments_raise_naming_the_value(cls, kwargs, named):
    with pytest.raises(ValueError, match=re.escape(named) + r".*allowed"):
        cls(make_opt(), **kwargs)


def test_a_warmup_as_long_as_the_run_names_the_key_that_was_set():
    with pytest.raises(ValueError, match=re.escape("scheduler.warmup_epochs=1 is invalid: allowed a warmup shorter "
                                                   "than the run's total_steps=4 (here 4 steps of 4 per epoch)")):
        CosineSchedule(make_opt(), steps_per_epoch=4, total_steps=4, warmup_epochs=1)


def test_negative_step_raises():
    with pytest.raises(ValueError, match="step=-1"):
        ConstantSchedule(make_opt(), **RUN).lr_at(-1)


CONFIGS = {"constant": ConstantSchedule, "step": StepSchedule, "warmup_step": StepSchedule,
           "multistep": MultiStepSchedule, "cosine": CosineSchedule, "warmup_cosine": CosineSchedule,
           "onecycle": OneCycleSchedule}


@pytest.mark.parametrize("name", CONFIGS)
def test_config_instantiates(name):
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    s = instantiate(cfg)(make_opt(), steps_per_epoch=10, total_steps=2000)
    assert type(s) is CONFIGS[name]
    assert all(0 < lr <= base for lr, base in zip(s.lr_at(1000), LRS))


def test_resnet_paper_overrides_through_hydra():
    cfg = OmegaConf.merge(OmegaConf.load(CONFIG_DIR / "multistep.yaml"), OmegaConf.from_dotlist(
        ["milestones=[32000,48000]", "milestones_unit=step", "gamma=0.1", "warmup_steps=400",
         "warmup_start_factor=0.1", "warmup_mode=constant"]))
    s = instantiate(cfg)(make_opt((0.1,)), steps_per_epoch=391, total_steps=64000)
    lrs = [s.lr_at(t)[0] for t in (0, 400, 32000, 48000)]
    assert lrs == pytest.approx([0.01, 0.1, 0.01, 0.001], rel=1e-12)
    assert math.isclose(s.state_dict()["hparams"]["milestones"][1], 48000)
