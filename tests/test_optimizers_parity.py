"""Our optimizers against torch.optim: same parameters after 100 steps on a small non-convex problem.

The problem is a 4-6-3 tanh MLP regressing fixed random targets, with two param groups of different
hyperparameters (first layer: the case's options; second layer: its own lr and one more change). Our run saves
its state_dict half way (through torch.save/torch.load(weights_only=True)), builds a fresh optimizer, loads it
and goes on; torch's runs straight through. float64 must agree to 1e-10 relative, float32 to 1e-5.
"""

import copy
import functools
import io
import itertools

import pytest
import torch

from optimizers.adagrad import Adagrad
from optimizers.adam import Adam, AdamW
from optimizers.lbfgs import LBFGS
from optimizers.lookahead import Lookahead
from optimizers.radam import RAdam
from optimizers.rmsprop import RMSprop
from optimizers.sgd import SGD

torch.set_num_threads(2)

STEPS, RELOAD_AT = 100, 50


def make_model(dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).to(dtype)


_GENERATOR = torch.Generator().manual_seed(1)
DATA = torch.randn(16, 4, generator=_GENERATOR, dtype=torch.float64), torch.randn(16, 3, generator=_GENERATOR,
                                                                                 dtype=torch.float64)


def loss_fn(model: torch.nn.Module, sign: float = 1.0) -> torch.Tensor:
    """Mean squared error on 16 fixed random examples; sign=-1 for `maximize` runs (same trajectory)."""
    x, y = (t.to(next(model.parameters()).dtype) for t in DATA)
    return sign * (model(x) - y).pow(2).mean()


def groups(model: torch.nn.Module, second: dict) -> list[dict]:
    return [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), **second}]


def reload(optimizer: torch.optim.Optimizer, make) -> torch.optim.Optimizer:
    """A fresh optimizer from `make()`, loaded with `optimizer`'s state_dict after a save/load round trip."""
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    buffer.seek(0)
    fresh = make()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


def train(make, model: torch.nn.Module, steps: int = STEPS, reload_at: int | None = None,
          sign: float = 1.0) -> torch.Tensor:
    """`steps` steps of `make()`'s optimizer on `model`; returns the flattened parameters."""
    optimizer = make()
    for step in range(steps):
        if step == reload_at:
            optimizer = reload(optimizer, make)
        optimizer.zero_grad()
        loss_fn(model, sign).backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def assert_close(ours: torch.Tensor, theirs: torch.Tensor, rel: float) -> None:
    error = ((ours - theirs).abs().max() / theirs.abs().max()).item()
    assert error <= rel, f"relative difference {error:.2e} > {rel:g}"


def options(**choices) -> list[dict]:
    """Every combination of the given option values, as kwargs dicts."""
    return [dict(zip(choices, values)) for values in itertools.product(*choices.values())]


def sgd_options() -> list[dict]:
    momentum = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, dampening=0.3),
                dict(momentum=0.9, nesterov=True)]
    return [{**m, **o} for m in momentum for o in options(weight_decay=[0.0, 0.01], maximize=[False, True])]


# name: (ours, torch's, base kwargs, second group's overrides, option combinations)
CASES = {
    "sgd": (SGD, torch.optim.SGD, dict(lr=0.1), dict(lr=0.05, weight_decay=0.02), sgd_options()),
    "rmsprop": (RMSprop, torch.optim.RMSprop, dict(lr=0.01), dict(lr=0.005, alpha=0.9),
                options(centered=[False, True], momentum=[0.0, 0.9], weight_decay=[0.0, 0.01],
                        maximize=[False, True])),
    "adagrad": (Adagrad, torch.optim.Adagrad, dict(lr=0.1), dict(lr=0.05, eps=1e-6),
                options(lr_decay=[0.0, 0.01], initial_accumulator_value=[0.0, 0.1], weight_decay=[0.0, 0.01],
                        maximize=[False, True])),
    "adam": (Adam, torch.optim.Adam, dict(lr=0.01), dict(lr=0.005, betas=(0.8, 0.99)),
             options(amsgrad=[False, True], weight_decay=[0.0, 0.01], maximize=[False, True])),
    "adamw": (AdamW, torch.optim.AdamW, dict(lr=0.01), dict(lr=0.005, betas=(0.8, 0.99)),
              options(amsgrad=[False, True], weight_decay=[0.0, 0.1], maximize=[False, True])),
    "radam": (RAdam, torch.optim.RAdam, dict(lr=0.01), dict(lr=0.005, betas=(0.8, 0.99)),
              options(decoupled_weight_decay=[False, True], weight_decay=[0.0, 0.01], maximize=[False, True])),
}
PARAMS = [pytest.param(name, kwargs, foreach, id=f"{name}-{'-'.join(f'{k}={v}' for k, v in kwargs.items())}"
                       f"-foreach={foreach}")
          for name, case in CASES.items() for kwargs in case[4] for foreach in (True, False)]


@pytest.mark.parametrize(("name", "kwargs", "foreach"), PARAMS)
def test_matches_torch_float64(name, kwargs, foreach):
    ours, theirs, base, second, _ = CASES[name]
    sign = -1.0 if kwargs.get("maximize") else 1.0
    kwargs = {**base, **kwargs, "foreach": foreach}
    model_a, model_b = make_model(), make_model()
    a = train(lambda: ours(groups(model_a, second), **kwargs), model_a, reload_at=RELOAD_AT, sign=sign)
    b = train(lambda: theirs(groups(model_b, second), **kwargs), model_b, sign=sign)
    assert_close(a, b, 1e-10)


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("foreach", [True, False])
def test_matches_torch_float32(name, foreach):
    ours, theirs, base, second, _ = CASES[name]
    model_a, model_b = make_model(torch.float32), make_model(torch.float32)
    a = train(lambda: ours(groups(model_a, second), **base, foreach=foreach), model_a, reload_at=RELOAD_AT)
    b = train(lambda: theirs(groups(model_b, second), **base, foreach=foreach), model_b)
    assert_close(a, b, 1e-5)


@pytest.mark.parametrize("name", CASES)
def test_continues_from_torch_state_dict(name):
    """Drop-in: torch's state_dict loads into ours (same keys, keyed by index) and the runs stay equal."""
    ours, theirs, base, second, _ = CASES[name]
    model_a, model_b = make_model(), make_model()
    reference = theirs(groups(model_b, second), **base)
    train(lambda: reference, model_b, steps=RELOAD_AT)
    model_a.load_state_dict(model_b.state_dict())
    optimizer = ours(groups(model_a, second), **base)
    optimizer.load_state_dict(copy.deepcopy(reference.state_dict()))  # torch shares `step` tensors on load
    assert_close(train(lambda: optimizer, model_a, steps=RELOAD_AT), train(lambda: reference, model_b,
                                                                          steps=RELOAD_AT), 1e-10)


STATE_KEYS = [
    (SGD, dict(lr=0.1, momentum=0.9), {"momentum_buffer"}),
    (RMSprop, dict(momentum=0.9, centered=True), {"step", "square_avg", "momentum_buffer", "grad_avg"}),
    (RMSprop, dict(), {"step", "square_avg"}),
    (Adagrad, dict(), {"step", "sum"}),
    (Adam, dict(amsgrad=True), {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}),
    (AdamW, dict(), {"step", "exp_avg", "exp_avg_sq"}),
    (RAdam, dict(), {"step", "exp_avg", "exp_avg_sq"}),
]


@pytest.mark.parametrize(("cls", "kwargs", "keys"), STATE_KEYS, ids=lambda x: getattr(x, "__name__", None))
def test_state_uses_torch_key_names(cls, kwargs, keys):
    model = make_model()
    optimizer = cls(model.parameters(), **kwargs)
    loss_fn(model).backward()
    optimizer.step()
    state = optimizer.state_dict()["state"]
    assert sorted(state) == list(range(4))
    assert all(set(s) == keys for s in state.values())
    assert all(torch.is_tensor(s["step"]) and s["step"].item() == 1.0 for s in state.values() if "step" in s)


BAD_ARGUMENTS = [
    (SGD, dict(lr=-0.1), "Invalid learning rate: -0.1 (must be >= 0)"),
    (SGD, dict(lr=0.1, momentum=-0.5), "Invalid momentum value: -0.5"),
    (SGD, dict(lr=0.1, weight_decay=-1.0), "Invalid weight_decay value: -1.0"),
    (SGD, dict(lr=0.1, nesterov=True), "Invalid nesterov: True (must be False unless momentum > 0"),
    (SGD, dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "dampening=0.1"),
    (RMSprop, dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (RMSprop, dict(momentum=-0.1), "Invalid momentum value: -0.1"),
    (RMSprop, dict(eps=-1e-8), "Invalid epsilon value: -1e-08 (must be >= 0)"),
    (RMSprop, dict(alpha=1.5), "Invalid alpha value: 1.5 (must be in [0, 1])"),
    (Adagrad, dict(lr_decay=-0.1), "Invalid lr_decay value: -0.1"),
    (Adagrad, dict(initial_accumulator_value=-1.0), "Invalid initial_accumulator_value value: -1.0"),
    (Adagrad, dict(eps=-1.0), "Invalid epsilon value: -1.0"),
    (Adam, dict(lr=-0.001), "Invalid learning rate: -0.001"),
    (Adam, dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0 (must be in [0, 1))"),
    (Adam, dict(betas=(0.9, -0.1)), "Invalid beta parameter at index 1: -0.1 (must be in [0, 1))"),
    (Adam, dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
    (AdamW, dict(betas=(0.9, 1.0)), "Invalid beta parameter at index 1: 1.0"),
    (AdamW, dict(weight_decay=-0.01), "Invalid weight_decay value: -0.01"),
    (RAdam, dict(betas=(-0.1, 0.999)), "Invalid beta parameter at index 0: -0.1"),
    (RAdam, dict(eps=-1.0), "Invalid epsilon value: -1.0"),
    (LBFGS, dict(lr=-1.0), "Invalid learning rate: -1.0"),
    (LBFGS, dict(line_search_fn="armijo"), "Invalid line_search_fn: armijo"),
    (functools.partial(Lookahead, base=functools.partial(SGD, lr=0.1)), dict(k=0), "Invalid k: 0"),
    (functools.partial(Lookahead, base=functools.partial(SGD, lr=0.1)), dict(alpha=1.5), "Invalid alpha: 1.5"),
]


@pytest.mark.parametrize(("cls", "kwargs", "message"), BAD_ARGUMENTS, ids=lambda x: str(x)[:40])
def test_rejects_bad_arguments(cls, kwargs, message):
    with pytest.raises(ValueError) as error:
        cls(make_model().parameters(), **kwargs)
    assert message in str(error.value)


def test_sgd_lr_in_velocity_is_torch_sgd_at_constant_lr_and_differs_after_a_change():
    """Textbook velocity v = mu v + lr g equals lr times torch's v while lr is constant."""
    kwargs = dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    for foreach in (True, False):
        model_a, model_b = make_model(), make_model()
        a = train(lambda: SGD(model_a.parameters(), **kwargs, foreach=foreach, lr_in_velocity=True), model_a,
                  reload_at=RELOAD_AT)
        assert_close(a, train(lambda: torch.optim.SGD(model_b.parameters(), **kwargs), model_b), 1e-10)
    runs = []
    for cls in (functools.partial(SGD, lr_in_velocity=True), torch.optim.SGD):
        model = make_model()
        optimizer = cls(model.parameters(), **kwargs)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
        for _ in range(30):
            optimizer.zero_grad()
            loss_fn(model).backward()
            optimizer.step()
            scheduler.step()
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert (runs[0] - runs[1]).abs().max() > 1e-4


@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_eps_inside_sqrt(centered):
    """Textbook denominator sqrt(s + eps): one step by hand, and both paths agree over a run."""
    model = make_model()
    optimizer = RMSprop(model.parameters(), lr=0.01, alpha=0.9, eps=1e-2, centered=centered, eps_inside_sqrt=True)
    loss_fn(model).backward()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.step()
    for w0, p in zip(before, model.parameters()):
        s = 0.1 * p.grad**2 - (0.1 * p.grad) ** 2 * centered
        torch.testing.assert_close(p.detach(), w0 - 0.01 * p.grad / (s + 1e-2).sqrt(), rtol=1e-12, atol=1e-14)
    runs = []
    for foreach in (True, False):
        model = make_model()
        runs.append(train(lambda: RMSprop(model.parameters(), lr=0.01, momentum=0.9, centered=centered,
                                          eps_inside_sqrt=True, foreach=foreach), model, reload_at=RELOAD_AT))
    assert_close(runs[0], runs[1], 1e-10)


def lookahead_reference(model: torch.nn.Module, k: int, alpha: float, steps: int, **sgd) -> torch.Tensor:
    """The paper's Algorithm 1 over torch.optim.SGD: k fast steps, phi <- phi + alpha (theta - phi), theta <- phi."""
    params = list(model.parameters())
    inner = torch.optim.SGD(params, **sgd)
    slow = [p.detach().clone() for p in params]
    for step in range(1, steps + 1):
        inner.zero_grad()
        loss_fn(model).backward()
        inner.step()
        if step % k == 0:
            with torch.no_grad():
                for phi, theta in zip(slow, params):
                    phi += alpha * (theta - phi)
                    theta.copy_(phi)
    return torch.cat([p.detach().flatten() for p in params])


@pytest.mark.parametrize(("k", "alpha"), [(5, 0.5), (3, 0.8)])
def test_lookahead_matches_the_paper(k, alpha):
    sgd = dict(lr=0.1, momentum=0.9, weight_decay=0.01)
    model_a, model_b = make_model(), make_model()
    ours = train(lambda: Lookahead(model_a.parameters(), base=functools.partial(SGD, **sgd), k=k, alpha=alpha),
                 model_a, steps=STEPS + 1, reload_at=RELOAD_AT + 2)  # reload between two synchronisations
    assert_close(ours, lookahead_reference(model_b, k, alpha, STEPS + 1, **sgd), 1e-10)


def test_lookahead_state_dict_round_trip_and_shared_param_groups():
    model = make_model()
    optimizer = Lookahead(model.parameters(), base=functools.partial(SGD, lr=0.1, momentum=0.9), k=4, alpha=0.3)
    assert optimizer.param_groups is optimizer.base.param_groups
    train(lambda: optimizer, model, steps=6)
    state = optimizer.state_dict()
    assert state["lookahead"] == {"steps": 6, "k": 4, "alpha": 0.3}
    assert set(state["state"][0]) == {"momentum_buffer", "slow_param"}
    fresh = Lookahead(model.parameters(), base=functools.partial(SGD, lr=0.1, momentum=0.9))
    fresh.load_state_dict(copy.deepcopy(state))
    assert (fresh.steps, fresh.k, fresh.alpha) == (6, 4, 0.3)
    assert fresh.param_groups is fresh.base.param_groups
    restored = fresh.state_dict()
    for i, s in state["state"].items():
        for key, value in s.items():
            assert torch.equal(restored["state"][i][key], value)


def test_lookahead_accepts_a_built_optimizer_and_follows_a_scheduler():
    model = make_model()
    optimizer = Lookahead(None, base=SGD(model.parameters(), lr=0.1), k=2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for _ in range(4):
        optimizer.zero_grad()
        loss_fn(model).backward()
        optimizer.step()
        scheduler.step()
    assert optimizer.base.param_groups[0]["lr"] == pytest.approx(0.025)


def train_lbfgs(cls, model: torch.nn.Module, steps: int, reload_at: int | None = None, sign: float = 1.0,
                **kwargs) -> torch.Tensor:
    def make():
        return cls(model.parameters(), **kwargs)

    optimizer = make()

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(model, sign)
        loss.backward()
        return loss

    for step in range(steps):
        if step == reload_at:
            optimizer = reload(optimizer, make)
        optimizer.step(closure)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("maximize", [False, True])
def test_lbfgs_matches_torch(line_search_fn, maximize):
    kwargs = dict(lr=1.0 if line_search_fn else 0.5, max_iter=10, history_size=4, line_search_fn=line_search_fn,
                  maximize=maximize)
    sign = -1.0 if maximize else 1.0
    model_a, model_b = make_model(), make_model()
    ours = train_lbfgs(LBFGS, model_a, steps=6, reload_at=3, sign=sign, **kwargs)
    theirs = train_lbfgs(torch.optim.LBFGS, model_b, steps=6, sign=sign, **kwargs)
    start = torch.cat([p.detach().flatten() for p in make_model().parameters()])
    assert (ours - start).abs().max() > 0.1
    assert_close(ours, theirs, 1e-10)


def test_grad_scaler_drives_adam_like_torch_adam():
    """fp32 GradScaler: unscale, skip the step on inf (step 7), halve the scale; params match torch's Adam."""
    results = []
    for cls in (Adam, torch.optim.Adam):
        model = make_model(torch.float32)
        optimizer = cls(model.parameters(), lr=0.01)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        for step in range(20):
            optimizer.zero_grad()
            loss = loss_fn(model) * (float("inf") if step == 7 else 1.0)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        results.append((torch.cat([p.detach().flatten() for p in model.parameters()]), scaler.get_scale(),
                        optimizer.state_dict()["state"][0]["step"].item()))
    (ours, ours_scale, ours_steps), (theirs, theirs_scale, theirs_steps) = results
    assert ours_scale == theirs_scale == 2.0**9
    assert ours_steps == theirs_steps == 19
    assert_close(ours, theirs, 1e-6)


@pytest.mark.parametrize("cls", [SGD, Adam])
def test_step_lr_scheduler_drives_our_optimizer(cls):
    runs, lrs = [], []
    for optimizer_cls in (cls, getattr(torch.optim, cls.__name__)):
        model = make_model()
        optimizer = optimizer_cls(groups(model, dict(lr=0.02)), lr=0.05)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10, gamma=0.5)
        for _ in range(35):
            optimizer.zero_grad()
            loss_fn(model).backward()
            optimizer.step()
            scheduler.step()
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        lrs.append([group["lr"] for group in optimizer.param_groups])
    assert lrs[0] == lrs[1] == pytest.approx([0.05 / 8, 0.02 / 8])
    assert_close(runs[0], runs[1], 1e-10)
