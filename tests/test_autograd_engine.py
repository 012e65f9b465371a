"""The from-scratch reverse-mode engine against torch.autograd (float64): random expressions over every op,
with broadcasting and values reused; and the lab tool that trains an MLP with it."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

from analysis.autograd import autograd_report, example_expression, graph_layout
from analysis.reverse_mode import Value, cross_entropy
from conftest import CONFIG_DIR
from utils.errors import ConfigError

LEAF_SHAPES = [(3, 4), (4,), (1, 4), (3, 1), (4, 2), ()]


def positive(pair):
    """x^2 + 0.5 on both sides: a safe operand for log, division and fractional powers."""
    v, t = pair
    return v * v + 0.5, t * t + 0.5


def _unary(rng, v, t):
    op = rng.integers(9)
    if op == 0:
        return v.exp() * 0.1, torch.exp(t) * 0.1
    if op == 1:
        v, t = positive((v, t))
        return v.log(), torch.log(t)
    if op == 2:
        return v.tanh(), torch.tanh(t)
    if op == 3:
        return v.sigmoid(), torch.sigmoid(t)
    if op == 4:
        return v.relu(), torch.relu(t)
    if op == 5:
        v, t = positive((v, t))
        return v ** 1.5, t ** 1.5
    if op == 6 and v.data.ndim == 2:
        return v.T, t.T
    if op == 7 and v.data.ndim >= 1:
        axis, keep = int(rng.integers(v.data.ndim)), bool(rng.integers(2))
        return v.max(axis=axis, keepdims=keep), torch.amax(t, dim=axis, keepdim=keep)
    if op == 8 and v.data.ndim >= 1:
        axis = int(rng.integers(v.data.ndim))
        return v.mean(axis=axis), t.mean(dim=axis)
    return -v, -t


def _binary(rng, a, b):
    (va, ta), (vb, tb) = a, b
    if va.data.ndim == 2 and vb.data.ndim == 2 and va.shape[1] == vb.shape[0] and rng.integers(2):
        return va @ vb, ta @ tb
    try:
        np.broadcast_shapes(va.shape, vb.shape)
    except ValueError:
        return None
    op = rng.integers(4)
    if op == 0:
        return va + vb, ta + tb
    if op == 1:
        return va - vb, ta - tb
    if op == 2:
        return va * vb, ta * tb
    vb, tb = positive((vb, tb))
    return va / vb, ta / tb


def random_expression(seed: int, nodes: int = 25):
    """Random leaves and ``nodes`` random ops on random earlier results (so values get reused), built twice:
    in the engine and in torch. Returns (engine leaves, torch leaves, engine output, torch output)."""
    rng = np.random.default_rng(seed)
    leaves = [rng.standard_normal(shape) for shape in LEAF_SHAPES]
    ours = [Value(x) for x in leaves]
    theirs = [torch.tensor(x, requires_grad=True) for x in leaves]
    pool = list(zip(ours, theirs))
    while len(pool) < len(leaves) + nodes:
        if rng.integers(3) == 0:
            pool.append(_unary(rng, *pool[rng.integers(len(pool))]))
        else:
            made = _binary(rng, pool[rng.integers(len(pool))], pool[rng.integers(len(pool))])
            if made is not None:
                pool.append(made)
    picks = rng.choice(len(pool), size=6, replace=False)
    out_v = sum((pool[i][0] ** 2).sum() for i in picks)
    out_t = sum((pool[i][1] ** 2).sum() for i in picks)
    return ours, theirs, out_v, out_t


@pytest.mark.parametrize("seed", range(40))
def test_random_expressions_match_torch_autograd_in_float64(seed):
    ours, theirs, out_v, out_t = random_expression(seed)
    out_v.backward()
    grads = torch.autograd.grad(out_t, theirs, allow_unused=True)
    assert float(out_v.data) == pytest.approx(float(out_t.detach()), rel=1e-12)
    for v, g in zip(ours, grads):
        expected = np.zeros(v.shape) if g is None else g.numpy()
        scale = max(np.abs(expected).max(initial=0.0), 1.0)
        assert np.abs(v.grad - expected).max() <= 1e-10 * scale


def test_a_value_used_twice_gets_both_contributions_and_broadcasts_sum_back():
    x = Value(np.array([1.0, -2.0, 3.0]))
    b = Value(np.array(0.5))
    (x * x + b).sum().backward()  # d/dx = 2x, d/db = 3 (broadcast over three entries)
    assert np.array_equal(x.grad, [2.0, -4.0, 6.0]) and float(b.grad) == 3.0


def test_cross_entropy_is_stable_and_matches_torch_at_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [3.0, 2.0, 1.0]])
    labels = np.array([1, 0])
    v = Value(logits)
    loss = cross_entropy(v, labels)
    loss.backward()
    t = torch.tensor(logits, requires_grad=True)
    ref = F.cross_entropy(t, torch.tensor(labels))
    ref.backward()
    assert float(loss.data) == pytest.approx(float(ref.detach()), rel=1e-14)
    assert np.allclose(v.grad, t.grad.numpy(), rtol=0, atol=1e-15)


def test_backward_visits_a_deep_chain_without_recursion():
    x = Value(0.5)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.backward()
    assert float(x.grad) == pytest.approx(1.0001 ** 5000, rel=1e-10)


def test_graph_layout_puts_every_node_right_of_its_parents():
    out = example_expression()
    position = graph_layout(out)
    for node in out.topological_order():
        for parent in node.parents:
            assert position[id(parent)][0] < position[id(node)][0]


def autograd_cfg(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("autograd", overrides=list(overrides))


def test_the_tool_trains_the_spiral_mlp_with_gradients_equal_to_torch(tmp_path):
    out, numbers = autograd_report(autograd_cfg("steps=400", "check_every=50", "hidden=[16,16]"), tmp_path)
    assert numbers["checked_steps"] == 9
    assert numbers["max_relative_grad_error"] < 1e-10
    assert numbers["final_accuracy"] > 0.75  # two spirals are not linearly separable: chance is 0.5
    for name in ("autograd_training.png", "autograd_graph.png", "autograd.json"):
        assert (tmp_path / name).stat().st_size > 1000


def test_bad_values_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"check_every=0 is invalid: allowed an integer >= 1"):
        autograd_report(autograd_cfg("check_every=0"), tmp_path)
