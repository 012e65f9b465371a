"""K-FAC: Kronecker factors against curvlinops' KFAC operator, the preconditioner against a dense solve, the KL
trust region, exact state round trips, and training runs (MNIST MLP to 97% in one epoch in the slow set)."""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from curvlinops import KFACLinearOperator

import models
import optimizers
from cli.compose import train
from optimizers.kfac import KFAC, label_directions

torch.set_num_threads(2)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 5, bias=False), nn.ReLU(),
                         nn.Linear(5, 3))


def cnn() -> nn.Module:  # stride, padding, a conv without bias, 1x1 spatial sharing at the end
    return nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 2, bias=False),
                         nn.Tanh(), nn.Flatten(), nn.Linear(4 * 3 * 3, 5), nn.Tanh(), nn.Linear(5, 3))


@pytest.mark.parametrize("make, shape", [(mlp, (2, 2, 3)), (cnn, (2, 8, 8))], ids=["mlp", "cnn"])
def test_factors_equal_curvlinops_kfac_with_the_exact_fisher(make, shape):
    torch.manual_seed(0)
    model = make().double()
    x, y = torch.randn(9, *shape, dtype=torch.float64), torch.randint(0, 3, (9,))
    optimizer = KFAC(model.parameters(), model=model, fisher="exact")
    model(x)  # a training-mode forward at step 0: the factors are computed from this batch
    reference_model = copy.deepcopy(model)  # our hooks must not fire inside the reference's passes
    reference = KFACLinearOperator(reference_model, nn.CrossEntropyLoss(), list(reference_model.parameters()),
                                   [(x, y)], fisher_type="type-2", separate_weight_and_bias=False,
                                   check_deterministic=False)
    reference.compute_kronecker_factors()
    names = {module: name for name, module in model.named_modules()}
    assert len(optimizer.layers) == len(reference._input_covariances) == (4 if make is cnn else 3)
    for layer in optimizer.layers:
        state, name = optimizer.state[layer.weight], names[layer]
        torch.testing.assert_close(state["A"], reference._input_covariances[name], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(state["G"], reference._gradient_covariances[name], rtol=1e-10, atol=1e-12)


def test_sampled_label_directions_average_to_the_softmax_hessian():
    torch.manual_seed(0)
    logits = torch.randn(3, 4, dtype=torch.float64)
    p = logits.softmax(1)
    hessian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # of -log softmax, per example
    exact = sum(v[:, :, None] * v[:, None, :] for v in label_directions(logits, "exact"))
    torch.testing.assert_close(exact, hessian)
    (v,) = label_directions(logits.repeat(20000, 1), "mc", torch.Generator().manual_seed(1))  # 20000 draws each
    mc = (v[:, :, None] * v[:, None, :]).reshape(20000, 3, 4, 4).mean(0)
    assert (mc - hessian).abs().max() < 0.01


def test_preconditioned_gradient_is_the_damped_kronecker_solve():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).double()
    damping = 0.05
    optimizer = KFAC(model.parameters(), model=model, lr=1.0, momentum=0.0, damping=damping, kl_clip=None)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 2, (16,))
    F.cross_entropy(model(x), y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    optimizer.step()
    for i, layer in enumerate(optimizer.layers):
        state = optimizer.state[layer.weight]
        v = torch.cat([grads[2 * i], grads[2 * i + 1][:, None]], 1)  # [dW | db], (out, in + 1)
        dense = torch.kron(state["A"], state["G"]) + damping * torch.eye(v.numel(), dtype=torch.float64)
        u = torch.linalg.solve(dense, v.T.reshape(-1)).reshape(v.shape[1], v.shape[0]).T  # vec: column-stacking
        step = torch.cat([before[2 * i] - layer.weight, (before[2 * i + 1] - layer.bias)[:, None]], 1)
        torch.testing.assert_close(step.detach(), u)


def test_kl_clip_scales_the_step_to_the_trust_region():
    torch.manual_seed(0)
    lr, kl_clip = 0.5, 1e-4
    x, y = torch.randn(32, 4, dtype=torch.float64), torch.randint(0, 3, (32,))
    steps = []
    for clip in (None, kl_clip):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
        optimizer = KFAC(model.parameters(), model=model, lr=lr, momentum=0.0, kl_clip=clip)
        F.cross_entropy(model(x), y).backward()
        before = torch.cat([p.detach().reshape(-1).clone() for p in model.parameters()])
        optimizer.step()
        steps.append(before - torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    nu = steps[1].norm() / steps[0].norm()  # the clipped step is the full one scaled by nu
    torch.testing.assert_close(steps[1], nu * steps[0])
    # the predicted KL of the clipped step, (lr nu)^2 U^T F U = (lr nu)^2 <U, g>, U = full step / lr, sits at the bound
    assert nu < 1 and (lr * nu) ** 2 * (steps[0] / lr).dot(g).item() == pytest.approx(kl_clip, rel=1e-9)


def test_state_dict_round_trip_continues_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    make = lambda m: KFAC(optimizers.param_groups(m), model=m, factor_update_interval=2, inverse_update_interval=3)
    optimizer = make(model)
    batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,))) for _ in range(10)]

    def take(m, opt, batch):
        opt.zero_grad()
        F.cross_entropy(m(batch[0]), batch[1]).backward()
        opt.step()

    for batch in batches[:5]:
        take(model, optimizer, batch)
    twin = copy.deepcopy(model)
    twin_optimizer = make(twin)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # as a checkpoint file holds it
    rng = torch.get_rng_state()
    for batch in batches[5:]:
        take(model, optimizer, batch)
    torch.set_rng_state(rng)  # the sampled labels come from torch's generator, which a checkpoint restores
    for batch in batches[5:]:
        take(twin, twin_optimizer, batch)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_config_builds_kfac_over_the_model_through_the_registry(cfg):
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    optimizer = optimizers.build(cfg("optimizer=kfac").optimizer, model)
    assert isinstance(optimizer, KFAC) and optimizer.layers == [model[0], model[2]]


@pytest.mark.parametrize("value, message", [({"damping": 0.0}, "Invalid damping: 0.0"),
                                            ({"fisher": "empirical"}, "Invalid fisher: empirical"),
                                            ({"stat_decay": 1.0}, "Invalid stat_decay: 1.0")])
def test_bad_options_name_the_value(value, message):
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=message):
        KFAC(model.parameters(), model=model, **value)


@pytest.mark.parametrize("make", [lambda: models.CNN(in_channels=3, num_classes=10, channels=(8, 16, 16)),
                                  lambda: models.ResNet(depth=20, in_channels=3, num_classes=10)],
                         ids=["cnn", "resnet20"])
def test_kfac_steps_conv_nets_with_a_factor_for_every_conv_and_linear_layer(make):
    torch.manual_seed(0)
    model = make()
    optimizer = KFAC(optimizers.param_groups(model), model=model, factor_update_interval=2, inverse_update_interval=2)
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert optimizer.layers == convs and all("QA" in optimizer.state[m.weight] for m in convs)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.slow
@pytest.mark.needs_data
def test_kfac_mnist_mlp_one_epoch_reaches_97_percent(cfg, tmp_path):
    summary = train(cfg("optimizer=kfac", "data.train_subset=null", "data.val_subset=null",
                        "data.batch_size=128", "trainer.sanity=run"), tmp_path)
    assert summary["final_val_acc"] >= 0.97
