"""Hessian-free: Gauss-Newton products against the dense Gauss-Newton matrix, CG against a direct solve, the
backtracking schedule, damping adaptation, and training (MNIST MLP to 95% in one epoch in the slow set)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cli.compose import train
from optimizers import HessianFree
from optimizers.hessian_free import conjugate_gradient, gauss_newton_product, kept_iterations

torch.set_num_threads(2)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()


def dense_gauss_newton(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """J^T H J / B built entry by entry: J the (B*C, P) Jacobian of the logits, H block-diagonal softmax Hessians."""
    params = [p.detach() for p in model.parameters()]
    sizes = [p.numel() for p in params]

    def logits(flat):
        chunks = [c.view(p.shape) for c, p in zip(flat.split(sizes), params)]
        return torch.func.functional_call(model, dict(zip([n for n, _ in model.named_parameters()], chunks)), (x,))

    flat = torch.cat([p.reshape(-1) for p in params])
    jacobian = torch.autograd.functional.jacobian(logits, flat)  # (B, C, P)
    p = logits(flat).softmax(1)
    hessians = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (B, C, C)
    return torch.einsum("bcp,bcd,bdq->pq", jacobian, hessians, jacobian) / len(x)


def test_gauss_newton_products_equal_the_dense_matrix():
    model = tiny_net()
    x = torch.randn(5, 3, dtype=torch.float64)
    dense = dense_gauss_newton(model, x)
    product = gauss_newton_product(model, dict(model.named_parameters()), x)
    assert torch.linalg.eigvalsh(dense).min() > -1e-12  # positive semi-definite, unlike the Hessian
    for v in torch.randn(4, dense.shape[0], dtype=torch.float64):
        torch.testing.assert_close(product(v), dense @ v, rtol=1e-10, atol=1e-12)


def test_preconditioned_cg_reaches_the_direct_solve():
    torch.manual_seed(0)
    m = torch.randn(12, 12, dtype=torch.float64)
    a, b = m @ m.T + 0.5 * torch.eye(12, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    iterates = conjugate_gradient(lambda v: a @ v, b, torch.zeros(12, dtype=torch.float64), a.diag(), 40, 1e-14)
    last, x, value = iterates[-1]
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-8)
    assert value == pytest.approx((0.5 * x @ a @ x - b @ x).item(), rel=1e-10)
    assert [i for i, _, _ in iterates[:-1]] == sorted(kept_iterations(last))[:len(iterates) - 1]


def test_backtracking_keeps_the_iterates_at_ceil_powers_of_1_3():
    assert kept_iterations(10) == {1, 2, 3, 4, 5, 7, 9, 10}


def test_steps_lower_the_loss_and_damping_falls_when_the_model_predicts_well():
    model = tiny_net()
    x, y = torch.randn(64, 3, dtype=torch.float64), torch.randint(0, 3, (64,))
    optimizer = HessianFree(model.parameters(), model=model, damping=1.0, curvature_batch_size=32)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    losses = [optimizer.step(closure).item() for _ in range(5)]
    state = optimizer.state[next(model.parameters())]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0] - 0.05
    assert state["step"] == 5 and state["damping"] < 1.0 and state["rho"] > 0.25


def test_preconditioning_a_batch_norm_model_is_refused_by_name():
    model = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    with pytest.raises(ValueError, match="Invalid precondition: True"):
        HessianFree(model.parameters(), model=model)


@pytest.mark.slow
@pytest.mark.needs_data
def test_hessian_free_mnist_mlp_one_epoch_reaches_95_percent(cfg, tmp_path):
    summary = train(cfg("experiment=hessian_free_mnist", "data.train_subset=null", "data.val_subset=null",
                        "data.batch_size=1000"), tmp_path)
    assert summary["final_val_acc"] >= 0.95
