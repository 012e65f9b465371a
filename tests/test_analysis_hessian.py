"""Hessian numerics against known answers (float64): a quadratic with a chosen spectrum, a tiny MLP's dense
Hessian; and the tool on a small MNIST checkpoint."""
import functools
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch.func import functional_call

from analysis.hessian import (flat, hessian_report, hutchinson_trace, hvp, lanczos, model_loss_terms,
                              slq_density, top_eigenvalues)
from conftest import CONFIG_DIR, DATA_ROOT, compose_cfg
from cli.compose import train

F64 = dict(dtype=torch.float64)


def quadratic(eigenvalues: list[float], seed: int = 0):
    """f(w) = 0.5 w^T A w with A = Q diag(lambda) Q^T, Q a random orthogonal matrix; returns (A, matvec by HVP)."""
    n = len(eigenvalues)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, **F64))
    a = q @ torch.diag(torch.tensor(eigenvalues, **F64)) @ q.T
    w = nn.Parameter(torch.randn(n, generator=g, **F64))
    return a, functools.partial(hvp, lambda: [0.5 * w @ a @ w], [w])


def test_hvp_of_a_quadratic_is_a_times_v():
    a, matvec = quadratic([5.0, 3.0, -1.0, 0.5])
    v = torch.randn(4, **F64)
    assert torch.allclose(matvec(v), a @ v, atol=1e-12)


def test_power_iteration_finds_the_chosen_top_eigenvalues_and_vectors():
    spectrum = [10.0, -7.0, 5.0, 3.0, 2.0, 1.0, 0.5, 0.25, 0.1, 0.0]
    a, matvec = quadratic(spectrum)
    values, vectors, _ = top_eigenvalues(matvec, 10, 3, max_iter=2000, tol=1e-12,
                                         generator=torch.Generator().manual_seed(1), **F64)
    assert values == pytest.approx([10.0, -7.0, 5.0], rel=1e-8)  # largest magnitude first, signs kept
    for value, v in zip(values, vectors):
        assert torch.allclose(a @ v, value * v, atol=1e-5)


def test_hutchinson_is_exact_on_a_diagonal_and_unbiased_otherwise():
    diag = torch.tensor([4.0, -1.0, 2.5, 0.5], **F64)
    estimate, stderr = hutchinson_trace(lambda v: diag * v, 4, 5, **F64)
    assert estimate == pytest.approx(6.0, abs=1e-12) and stderr == pytest.approx(0.0, abs=1e-12)
    spectrum = [10.0, -7.0, 5.0, 3.0, 2.0, 1.0]
    _, matvec = quadratic(spectrum)
    estimate, stderr = hutchinson_trace(matvec, 6, 2000, generator=torch.Generator().manual_seed(0), **F64)
    assert 0 < stderr < 0.5
    assert abs(estimate - sum(spectrum)) < 4 * stderr


def test_slq_density_integrates_to_one_with_mass_at_the_chosen_eigenvalues():
    clusters = {1.0: 20, 4.0: 10, 10.0: 5, -2.0: 5}  # eigenvalue: multiplicity, n = 40
    _, matvec = quadratic([lam for lam, m in clusters.items() for _ in range(m)])
    density = slq_density(matvec, 40, steps=20, runs=200, sigma_rel=0.01, points=4000,
                          generator=torch.Generator().manual_seed(0), **F64)
    assert torch.trapezoid(density.density, density.grid) == pytest.approx(1.0, abs=1e-6)
    for theta, tau in zip(density.ritz_values, density.weights):
        assert len(theta) == len(clusters)  # the Krylov space holds one direction per distinct eigenvalue
        assert torch.allclose(theta, torch.tensor(sorted(clusters), **F64), atol=1e-8)
        assert tau.sum() == pytest.approx(1.0, abs=1e-12)
    for lam, multiplicity in clusters.items():
        near = (density.grid - lam).abs() < 4 * density.sigma
        mass = torch.trapezoid(density.density * near, density.grid)
        assert mass == pytest.approx(multiplicity / 40, abs=0.03)


def tiny_mlp_problem():
    """A 3-5-2 tanh MLP on 12 examples in two batches: (model, params, batches, dense Hessian of the mean CE)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    x, y = torch.randn(12, 3, **F64), torch.randint(0, 2, (12,))
    batches = [(x[:7], y[:7]), (x[7:], y[7:])]
    params = list(model.parameters())
    names, shapes = [n for n, _ in model.named_parameters()], [p.shape for p in params]

    def loss_of(w):
        pieces = dict(zip(names, (u.view(s) for u, s in zip(w.split([s.numel() for s in shapes]), shapes))))
        return F.cross_entropy(functional_call(model, pieces, (x,)), y)

    dense = torch.autograd.functional.hessian(loss_of, flat(p.detach() for p in params))
    return model, params, batches, dense


def test_tiny_mlp_against_the_dense_hessian():
    model, params, batches, dense = tiny_mlp_problem()
    matvec = functools.partial(hvp, model_loss_terms(model, batches), params)
    dim = dense.shape[0]
    v = torch.randn(dim, **F64)
    assert torch.allclose(matvec(v), dense @ v, atol=1e-12)  # two batches summed = the full-batch Hessian

    exact = torch.linalg.eigvalsh(dense)
    by_magnitude = exact[exact.abs().argsort(descending=True)]
    values, _, _ = top_eigenvalues(matvec, dim, 2, max_iter=5000, tol=1e-13,
                                   generator=torch.Generator().manual_seed(0), **F64)
    assert values == pytest.approx(by_magnitude[:2].tolist(), rel=1e-6)

    estimate, stderr = hutchinson_trace(matvec, dim, 500, generator=torch.Generator().manual_seed(0), **F64)
    assert abs(estimate - exact.sum().item()) < 4 * stderr

    theta, tau = lanczos(matvec, torch.randn(dim, **F64), steps=dim)
    assert theta.max().item() == pytest.approx(exact.max().item(), rel=1e-8)
    assert theta.min().item() == pytest.approx(exact.min().item(), rel=1e-6, abs=1e-10)
    assert tau.sum().item() == pytest.approx(1.0, abs=1e-10)


@pytest.mark.needs_data
def test_hessian_tool_on_a_checkpoint_writes_density_and_numbers(tmp_path):
    train(compose_cfg("model.hidden_sizes=[32]", "trainer.epochs=2"), tmp_path / "run")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("hessian", overrides=[
            f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'last.pt'}", f"data.root={DATA_ROOT}",
            "trainer.device=cpu", "samples=256", "top_k=2", "power_iterations=200", "tol=1e-6",
            "trace_samples=10", "lanczos_steps=30", "slq_runs=1"])
    _, numbers = hessian_report(cfg, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "hessian.json").read_text())
    assert saved["top_eigenvalues"] == numbers["top_eigenvalues"] and saved["parameters"] == 784 * 32 + 32 + 330
    top = numbers["top_eigenvalues"][0]
    assert top > 0 and abs(top) >= abs(numbers["top_eigenvalues"][1])
    assert max(saved["slq"]["ritz_values"][0]) == pytest.approx(top, rel=1e-3)  # two methods, one edge
    assert saved["trace"]["estimate"] > 0
    assert (tmp_path / "out" / "hessian_density.png").stat().st_size > 10_000
