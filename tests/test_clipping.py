import re

import pytest
import torch

from training.clipping import ClipResult, clip_gradients

torch.set_num_threads(2)


def make_params(seed=0):
    """Linear weight and zero bias, a conv filter bank with one all-zero filter, a scalar, one param without grad."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (4,), (5, 2, 3, 3), ()]
    params = [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes]
    with torch.no_grad():
        params[1].zero_()  # ‖W‖ = 0: AGC falls back to eps
        params[2][3].zero_()
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=torch.float64)
    params.append(torch.nn.Parameter(torch.ones(2, dtype=torch.float64)))  # .grad is None: skipped
    return params


def grads(params):
    return [p.grad.clone() for p in params if p.grad is not None]


def global_norm(gs):
    return torch.sqrt(sum((g**2).sum() for g in gs))


def assert_grads_equal(a, b):
    for x, y in zip(grads(a), grads(b), strict=True):
        torch.testing.assert_close(x, y, atol=1e-12, rtol=0)


@pytest.mark.parametrize("max_value, clips", [(0.5, True), (1e3, False)])
def test_norm_matches_torch(max_value, clips):
    ours, theirs = make_params(), make_params()
    before = global_norm(grads(ours))
    torch_norm = torch.nn.utils.clip_grad_norm_(theirs, max_value)
    res = clip_gradients(ours, "norm", max_value)
    assert_grads_equal(ours, theirs)
    torch.testing.assert_close(res.total_norm, torch_norm, atol=1e-12, rtol=0)
    torch.testing.assert_close(res.total_norm, before, atol=1e-12, rtol=0)
    assert res.clipped.item() is clips
    assert global_norm(grads(ours)).item() == pytest.approx(min(max_value, before.item()), rel=1e-5)


@pytest.mark.parametrize("max_value, clips", [(0.5, True), (1e3, False)])
def test_value_matches_torch(max_value, clips):
    ours, theirs = make_params(), make_params()
    before = global_norm(grads(ours))
    torch.nn.utils.clip_grad_value_(theirs, max_value)
    res = clip_gradients(ours, "value", max_value)
    assert_grads_equal(ours, theirs)
    torch.testing.assert_close(res.total_norm, before, atol=1e-12, rtol=0)
    assert res.clipped.item() is clips
    assert max(g.abs().max().item() for g in grads(ours)) <= max_value


def agc_reference(params, lam, eps):
    """G_i <- lam * max(‖W_i‖, eps) / ‖G_i‖ * G_i where ‖G_i‖ / max(‖W_i‖, eps) > lam, one unit at a time."""
    any_clipped = False
    for p in params:
        if p.grad is None:
            continue
        units = range(p.shape[0]) if p.ndim > 1 else [...]
        for i in units:
            w = max(p.data[i].norm().item(), eps)
            g = p.grad[i].norm().item()
            if g / w > lam:
                p.grad[i] *= lam * w / g
                any_clipped = True
    return any_clipped


@pytest.mark.parametrize("lam, eps", [(1.0, 1e-3), (0.05, 1e-1), (1e4, 1e-3)])  # clips 3, 10, 0 of 11 units
def test_agc_matches_unitwise_formula(lam, eps):
    ours, ref = make_params(), make_params()
    before = global_norm(grads(ours))
    clips = agc_reference(ref, lam, eps)
    res = clip_gradients(ours, "agc", lam, agc_eps=eps)
    assert_grads_equal(ours, ref)
    torch.testing.assert_close(res.total_norm, before, atol=1e-12, rtol=0)
    assert res.clipped.item() is clips
    assert clips is (lam < 1e4)  # the cases exercise both directions
    if clips:
        assert not all(torch.equal(a, b) for a, b in zip(grads(ours), grads(make_params())))


def test_agc_keeps_unclipped_units_and_zero_grads():
    p = torch.nn.Parameter(torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]], dtype=torch.float64))
    p.grad = torch.tensor([[0.05, 0.0], [3.0, 4.0], [0.0, 0.0]], dtype=torch.float64)  # ratios 0.05, 5, 0
    res = clip_gradients([p], "agc", 0.1)
    torch.testing.assert_close(p.grad, torch.tensor([[0.05, 0.0], [0.06, 0.08], [0.0, 0.0]], dtype=torch.float64))
    assert res.clipped.item() is True


def test_none_only_measures():
    params = make_params()
    before = grads(params)
    res = clip_gradients(params, "none", 0.0)
    assert isinstance(res, ClipResult) and res.total_norm.ndim == 0 and res.clipped.dtype == torch.bool
    torch.testing.assert_close(res.total_norm, global_norm(before), atol=1e-12, rtol=0)
    assert res.clipped.item() is False
    assert all(torch.equal(a, b) for a, b in zip(before, grads(params)))


@pytest.mark.parametrize("mode", ["none", "norm", "value", "agc"])
def test_results_are_0dim_tensors(mode):
    res = clip_gradients(make_params(), mode, 0.5)
    assert isinstance(res.total_norm, torch.Tensor) and res.total_norm.ndim == 0
    assert isinstance(res.clipped, torch.Tensor) and res.clipped.ndim == 0 and res.clipped.dtype == torch.bool


def test_no_gradients_gives_zero_norm():
    res = clip_gradients([torch.nn.Parameter(torch.ones(3))], "norm", 1.0)
    assert res.total_norm.item() == 0.0 and res.clipped.item() is False


@pytest.mark.parametrize("mode, max_value, kwargs, named", [
    ("l2", 1.0, {}, "mode='l2'"),
    ("norm", 0.0, {}, "max_value=0.0"),
    ("value", -1.0, {}, "max_value=-1.0"),
    ("agc", 0, {}, "max_value=0"),
    ("agc", 0.01, {"agc_eps": 0.0}, "agc_eps=0.0"),
])
def test_bad_arguments_raise_naming_the_value(mode, max_value, kwargs, named):
    with pytest.raises(ValueError, match=re.escape(named) + r".*allowed"):
        clip_gradients(make_params(), mode, max_value, **kwargs)
