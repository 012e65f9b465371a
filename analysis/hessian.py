"""Hessian spectra of the training loss: Hessian-vector products, top eigenvalues, trace, spectral density.

Every method sees the Hessian H = d^2 L / dw^2 only through products Hv, computed by double backprop
(Pearlmutter 1994): Hv = d/dw (grad L(w) . v), one extra backward pass, never forming H. Vectors are flat
(all parameters concatenated, in ``params`` order). The loss is given as ``loss_terms``, a callable yielding
the terms whose sum is L (one per batch, each weighted by its share of the examples), so Hv sums over batches
without holding every batch's graph at once.

- ``top_eigenvalues``: power iteration with deflation: the k eigenvalues of largest magnitude (signed).
- ``hutchinson_trace``: tr(H) = E[z^T H z] for Rademacher z (Hutchinson 1989).
- ``lanczos`` / ``slq_density``: stochastic Lanczos quadrature (Ghorbani et al. 2019).

``python -m analysis.hessian checkpoint=<run>/checkpoints/last.pt`` applies them to the mean cross-entropy of a
checkpoint on ``samples`` fixed training examples (eval mode) and writes ``hessian_density.png`` (the SLQ density,
log scale, the power-iteration eigenvalues marked) and ``hessian.json`` (every number), and TensorBoard images.
"""
import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import Tensor

from analysis.figures import FigureWriter, plt
from analysis.loading import Batches, fixed_batches, load_checkpoint_model, mean_loss, with_checkpoint_data
from cli.entry import command, run
from utils.device import full_fp32, resolve_device
from utils.errors import require
from utils.io import save_json

LossTerms = Callable[[], Iterable[Tensor]]


def flat(tensors: Iterable[Tensor]) -> Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def hvp(loss_terms: LossTerms, params: list[Tensor], v: Tensor) -> Tensor:
    """H v for a flat v: sum over the loss terms of d/dw (grad term . v)."""
    pieces = [u.view_as(p) for u, p in zip(v.split([p.numel() for p in params]), params)]
    total = torch.zeros_like(v)
    for term in loss_terms():
        grads = torch.autograd.grad(term, params, create_graph=True)
        dot = sum((g * u).sum() for g, u in zip(grads, pieces))
        total += flat(torch.autograd.grad(dot, params))
    return total


def _orthogonalize(v: Tensor, basis: list[Tensor]) -> Tensor:
    """v minus its projections on the orthonormal ``basis`` (Gram-Schmidt, done twice for round-off)."""
    for _ in range(2):
        for b in basis:
            v = v - (b @ v) * b
    return v


def top_eigenvalues(matvec: Callable[[Tensor], Tensor], dim: int, k: int = 1, *, max_iter: int = 100,
                    tol: float = 1e-4, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32, device="cpu") -> tuple[list[float], list[Tensor], list[int]]:
    """The k eigenvalues of largest magnitude, their unit eigenvectors, and the iterations each took.

    Power iteration v <- H v / ||H v|| on the complement of the eigenvectors already found (deflation: every
    iterate is orthogonalised against them, so the i-th run sees (I - V V^T) H (I - V V^T)); the estimate
    lambda = v^T H v stops when it changes by less than tol * |lambda|.
    """
    values, vectors, iterations = [], [], []
    for _ in range(k):
        v = _orthogonalize(torch.randn(dim, generator=generator, dtype=dtype).to(device), vectors)
        v = v / v.norm()
        value = None
        for it in range(1, max_iter + 1):
            hv = _orthogonalize(matvec(v), vectors)
            new = float(v @ hv)
            v = hv / hv.norm()
            if value is not None and abs(new - value) <= tol * abs(new):
                value = new
                break
            value = new
        values.append(value)
        vectors.append(v)
        iterations.append(it)
    return values, vectors, iterations


def hutchinson_trace(matvec: Callable[[Tensor], Tensor], dim: int, samples: int, *,
                     generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                     device="cpu") -> tuple[float, float]:
    """tr(H) ~ (1/m) sum_i z_i^T H z_i, z_i with independent +-1 entries; returns (estimate, standard error)."""
    estimates = []
    for _ in range(samples):
        z = (torch.randint(0, 2, (dim,), generator=generator) * 2 - 1).to(dtype=dtype, device=device)
        estimates.append(float(z @ matvec(z)))
    values = torch.tensor(estimates, dtype=torch.float64)
    stderr = float(values.std() / math.sqrt(samples)) if samples > 1 else float("nan")
    return float(values.mean()), stderr


def lanczos(matvec: Callable[[Tensor], Tensor], v0: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """m = ``steps`` Lanczos steps from v0 with full reorthogonalisation; returns the Ritz values theta_j
    (eigenvalues of the tridiagonal T_m = Q^T H Q) and the weights tau_j = (first component of T_m's
    j-th eigenvector)^2, which sum to 1. Stops early when the Krylov space is exhausted (beta ~ 0)."""
    q = v0 / v0.norm()
    basis, alphas, betas = [q], [], []
    for j in range(steps):
        w = matvec(basis[-1])
        alphas.append(float(basis[-1] @ w))
        w = _orthogonalize(w, basis)  # removes alpha_j q_j and beta_{j-1} q_{j-1}, and the round-off drift
        beta = float(w.norm())
        if j == steps - 1 or beta <= 1e-10 * max(abs(a) for a in alphas + [1e-30]):
            break
        betas.append(beta)
        basis.append(w / beta)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    theta, u = torch.linalg.eigh(t)
    return theta, u[0] ** 2


@dataclass
class Density:
    grid: Tensor         # eigenvalue axis
    density: Tensor      # phi(t) on the grid
    ritz_values: list[Tensor]
    weights: list[Tensor]
    sigma: float


def slq_density(matvec: Callable[[Tensor], Tensor], dim: int, *, steps: int = 80, runs: int = 1,
                sigma_rel: float = 0.01, points: int = 1000, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32, device="cpu") -> Density:
    """Spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019, sec. 3):

        phi(t) = (1/n_v) sum_l sum_j tau_j^l g_sigma(t - theta_j^l)
        g_sigma(x) = exp(-x^2 / (2 sigma^2)) / (sigma sqrt(2 pi))

    over n_v = ``runs`` Gaussian start vectors, each giving m = ``steps`` Ritz values theta and weights tau;
    sigma = sigma_rel * (spread of the Ritz values). phi integrates to 1 (the grid extends 5 sigma past them)."""
    nodes, weights = [], []
    for _ in range(runs):
        theta, tau = lanczos(matvec, torch.randn(dim, generator=generator, dtype=dtype).to(device), steps)
        nodes.append(theta)
        weights.append(tau)
    every = torch.cat(nodes)
    spread = float(every.max() - every.min())
    sigma = sigma_rel * (spread if spread > 0 else max(float(every.abs().max()), 1.0))
    grid = torch.linspace(float(every.min()) - 5 * sigma, float(every.max()) + 5 * sigma, points, dtype=torch.float64)
    density = torch.zeros_like(grid)
    for theta, tau in zip(nodes, weights):
        gauss = torch.exp(-((grid[:, None] - theta[None, :]) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
        density += gauss @ tau
    return Density(grid, density / runs, nodes, weights, sigma)


def model_loss_terms(model: nn.Module, batches: Batches) -> LossTerms:
    """The mean cross-entropy over all the batches' examples, as one term per batch: sum(CE) / N."""
    total = sum(len(y) for _, y in batches)
    return lambda: (F.cross_entropy(model(x), y, reduction="sum") / total for x, y in batches)


def plot_density(density: Density, top: list[float]):
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.semilogy(density.grid, density.density.clamp_min(1e-12), lw=1.2)
    for i, value in enumerate(top):
        ax.axvline(value, color="red", ls="--", lw=0.8, label="power iteration (top-k)" if i == 0 else None)
    ax.set(xlabel="eigenvalue", ylabel="density", ylim=(1e-8, None),
           title=f"Hessian eigenvalue density (SLQ, {len(density.ritz_values)} x {len(density.ritz_values[0])} "
                 f"Ritz values, sigma {density.sigma:.2g})")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


@full_fp32()  # the lab reports IEEE fp32 numbers, whatever trainer.tf32 says
def hessian_report(cfg: DictConfig, out_dir: str | Path) -> tuple[FigureWriter, dict]:
    require(cfg.top_k >= 1, "top_k", cfg.top_k, "an integer >= 1")
    require(cfg.lanczos_steps >= 2, "lanczos_steps", cfg.lanczos_steps, "an integer >= 2")
    device = resolve_device(cfg.trainer.device)
    model = load_checkpoint_model(cfg.checkpoint, cfg.data)[0].to(device).eval()
    batches = fixed_batches(instantiate(cfg.data), cfg.samples, cfg.data.eval_batch_size, device)
    params = [p for p in model.parameters() if p.requires_grad]
    dim, terms = sum(p.numel() for p in params), model_loss_terms(model, batches)
    matvec = functools.partial(hvp, terms, params)
    generator = torch.Generator().manual_seed(cfg.seed)
    options = dict(generator=generator, device=device)
    top, _, iterations = top_eigenvalues(matvec, dim, cfg.top_k, max_iter=cfg.power_iterations, tol=cfg.tol,
                                         **options)
    trace, stderr = hutchinson_trace(matvec, dim, cfg.trace_samples, **options)
    density = slq_density(matvec, dim, steps=cfg.lanczos_steps, runs=cfg.slq_runs, sigma_rel=cfg.sigma, **options)
    numbers = {"checkpoint": str(cfg.checkpoint), "samples": cfg.samples, "parameters": dim,
               "loss": mean_loss(model, batches), "top_eigenvalues": top, "power_iterations": iterations,
               "trace": {"estimate": trace, "stderr": stderr, "samples": cfg.trace_samples},
               "slq": {"steps": cfg.lanczos_steps, "runs": cfg.slq_runs, "sigma": density.sigma,
                       "ritz_values": [t.tolist() for t in density.ritz_values],
                       "weights": [w.tolist() for w in density.weights]}}
    out = FigureWriter(out_dir, tensorboard=True)
    out.save(plot_density(density, top), "hessian_density")
    save_json(numbers, out.out_dir / "hessian.json")
    out.add(out.out_dir / "hessian.json")
    return out, numbers


@command("hessian")
def main(cfg: DictConfig) -> None:
    cfg = with_checkpoint_data(cfg, HydraConfig.get().overrides.task)
    out, numbers = hessian_report(cfg, HydraConfig.get().runtime.output_dir)
    top = ", ".join(f"{v:.4g}" for v in numbers["top_eigenvalues"])
    print(f"loss {numbers['loss']:.4f}; top eigenvalues {top}; "
          f"trace {numbers['trace']['estimate']:.4g} +- {numbers['trace']['stderr']:.2g}")
    print(out.report())


if __name__ == "__main__":
    run(main)
