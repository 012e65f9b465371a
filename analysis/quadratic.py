"""Convergence theory on quadratics, measured: ``python -m analysis.quadratic``.

Every step is ``optimizers.functional.sgd`` (the training optimizers' own update rule) on a float64 vector.

1. Full-batch GD against minibatch SGD on least squares, f(w) = (1/2n) ||X w - y||^2 with noisy targets.
   Batch size b steps at 1/L_b, where L_b = (n(b-1) L + (n-b) L_max) / (b(n-1)) is the expected smoothness of a
   b-example batch sampled without replacement (Gower et al. 2019), L the largest eigenvalue of X^T X / n and
   L_max = max_i ||x_i||^2; for b = n this is GD at 1/L. GD converges linearly to f*; SGD at a constant step stops
   at a noise floor that shrinks with b. Figure ``gd_vs_sgd.png``: f - f* against passes over the data.
2. The linear rate on f(w) = 1/2 w^T A w with the eigenvalues of A spread from mu = 1 to L = kappa. Tuned GD
   (step 2/(L + mu)) contracts the error by r = (kappa - 1)/(kappa + 1) per step; heavy-ball momentum
   w_{t+1} = w_t - eta grad f(w_t) + beta (w_t - w_{t-1}) with eta = 4/(sqrt L + sqrt mu)^2 and
   beta = ((sqrt kappa - 1)/(sqrt kappa + 1))^2 (Polyak 1964) by r = (sqrt kappa - 1)/(sqrt kappa + 1). (PyTorch's
   momentum form v <- beta v + g, w <- w - eta v is this iteration.) The measured rate is
   (||e_T|| / ||e_s||)^(1/(T - s)) between the steps s and T at which the error ||w - w*|| first falls below
   ``rate_window`` (relative to ||e_0||). Figures ``rates.png`` (measured and theory against kappa) and
   ``rate_curves.png`` (the error curves at each kappa).
Also ``quadratic.json`` with every number, and the figures as TensorBoard images.
"""
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import Tensor

from analysis.figures import FigureWriter, plt
from cli.entry import command, run
from optimizers.functional import sgd
from utils.errors import require
from utils.io import save_json

F64 = torch.float64


@dataclass
class LeastSquares:
    """f(w) = (1/2n) ||X w - y||^2 and what the step sizes need: its minimum, L and the largest ||x_i||^2."""
    x: Tensor
    y: Tensor
    w_star: Tensor
    f_star: float
    L: float
    L_max: float

    @classmethod
    def random(cls, n: int, d: int, noise: float, generator: torch.Generator) -> "LeastSquares":
        x = torch.randn(n, d, generator=generator, dtype=F64)
        y = x @ torch.randn(d, generator=generator, dtype=F64) + noise * torch.randn(n, generator=generator,
                                                                                   dtype=F64)
        w_star = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
        problem = cls(x, y, w_star, 0.0, float(torch.linalg.eigvalsh(x.T @ x / n)[-1]),
                      float((x * x).sum(dim=1).max()))
        problem.f_star = problem.loss(w_star)
        return problem

    def loss(self, w: Tensor) -> float:
        return float(((self.x @ w - self.y) ** 2).mean() / 2)

    def gradient(self, w: Tensor, rows: Tensor) -> Tensor:
        """grad of (1/2b) sum over the batch ``rows`` of (x_i . w - y_i)^2."""
        x = self.x[rows]
        return x.T @ (x @ w - self.y[rows]) / len(rows)

    def step_size(self, b: int) -> float:
        """1/L_b, L_b the expected smoothness of a b-example minibatch (L for the full batch)."""
        n = len(self.y)
        return b * (n - 1) / (n * (b - 1) * self.L + (n - b) * self.L_max)


def sgd_curve(problem: LeastSquares, batch_size: int, epochs: int, points_per_epoch: int,
              generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Minibatch SGD (a new permutation each epoch, batches of ``batch_size``, the last one dropped if short) from
    w = 0 at 1/L_b; returns (passes over the data, f - f*) at about ``points_per_epoch`` points per epoch."""
    n = len(problem.y)
    w, lr = torch.zeros(problem.x.shape[1], dtype=F64), problem.step_size(batch_size)
    steps_per_epoch = n // batch_size
    every = max(1, steps_per_epoch // points_per_epoch)
    passes, gaps = [0.0], [problem.loss(w) - problem.f_star]
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        for k in range(steps_per_epoch):
            sgd([w], [problem.gradient(w, order[k * batch_size:(k + 1) * batch_size])], [None], lr=lr, foreach=False)
            if (k + 1) % every == 0:
                passes.append(epoch + (k + 1) * batch_size / n)
                gaps.append(problem.loss(w) - problem.f_star)
    return np.array(passes), np.array(gaps)


def spread_quadratic(d: int, kappa: float, generator: torch.Generator) -> Tensor:
    """A = Q diag(lambda) Q^T, lambda log-spaced from 1 to kappa (both ends included), Q random orthogonal."""
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=F64))
    return q @ torch.diag(torch.logspace(0, math.log10(kappa), d, dtype=F64)) @ q.T


def tuned(method: str, kappa: float, mu: float = 1.0) -> tuple[float, float, float]:
    """(step size, momentum, theoretical rate) of tuned GD or heavy ball on eigenvalues in [mu, kappa mu]."""
    L = kappa * mu
    if method == "gd":
        return 2 / (L + mu), 0.0, (kappa - 1) / (kappa + 1)
    rate = (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)
    return 4 / (math.sqrt(L) + math.sqrt(mu)) ** 2, rate**2, rate


def error_curve(a: Tensor, w0: Tensor, lr: float, momentum: float, tol: float, max_steps: int) -> np.ndarray:
    """||w_t|| (the minimiser is 0) for t = 0, 1, ... under the SGD rule with this LR and momentum, until it
    falls below tol * ||w_0|| or after max_steps steps."""
    w, buffers = w0.clone(), [None]
    errors = [float(w.norm())]
    while errors[-1] > tol * errors[0] and len(errors) <= max_steps:
        sgd([w], [a @ w], buffers, lr=lr, momentum=momentum, foreach=False)
        errors.append(float(w.norm()))
    return np.array(errors)


def measured_rate(errors: np.ndarray, window: tuple[float, float]) -> float:
    """(e_T / e_s)^(1/(T - s)), s and T the first steps with e_t / e_0 below window[0] and window[1]."""
    relative = errors / errors[0]
    if not np.isfinite(relative).all():
        raise ValueError(f"the iteration diverged after {len(errors) - 1} steps: no linear rate to measure")
    s, t = int(np.argmax(relative < window[0])), int(np.argmax(relative < window[1]))
    require(relative[-1] < window[1] and t > s, "max_steps", len(errors) - 1,
            f"enough steps for the error to fall below {window[1]:g} (raise max_steps)")
    return float((relative[t] / relative[s]) ** (1 / (t - s)))


def rates_over_kappa(cfg: DictConfig, generator: torch.Generator) -> dict:
    results = {"kappa": list(cfg.kappas), "gd": {"theory": [], "measured": []},
               "heavy_ball": {"theory": [], "measured": []}, "curves": {}}
    window = tuple(cfg.rate_window)
    for kappa in cfg.kappas:
        a = spread_quadratic(cfg.dim, kappa, generator)
        w0 = torch.randn(cfg.dim, generator=generator, dtype=F64)
        for method in ("gd", "heavy_ball"):
            lr, momentum, theory = tuned(method, kappa)
            errors = error_curve(a, w0, lr, momentum, window[1] / 10, cfg.max_steps)
            results[method]["theory"].append(theory)
            results[method]["measured"].append(measured_rate(errors, window))
            results["curves"][f"{method} kappa={kappa:g}"] = (errors / errors[0]).tolist()
    return results


def plot_gd_vs_sgd(curves: dict[int, tuple[np.ndarray, np.ndarray]], n: int):
    fig, ax = plt.subplots(figsize=(8, 5))
    for b, (passes, gaps) in curves.items():
        ax.semilogy(passes, np.maximum(gaps, 1e-16), lw=1.2, label="full-batch GD" if b == n else f"SGD, batch {b}")
    ax.set(xlabel="passes over the data (epochs)", ylabel="f(w) - f*", ylim=(1e-16, None),
           title=f"least squares, n = {n}: each batch size at step 1/L_b")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def plot_rates(results: dict):
    kappa = np.array(results["kappa"])
    fig, ax = plt.subplots(figsize=(8, 5))
    for method, name, color in (("gd", "GD", "C0"), ("heavy_ball", "heavy ball", "C1")):
        ax.semilogx(kappa, 1 - np.array(results[method]["theory"]), "-", color=color, label=f"{name}: theory")
        ax.semilogx(kappa, 1 - np.array(results[method]["measured"]), "o", color=color, label=f"{name}: measured")
    ax.set(xlabel="condition number kappa", ylabel="1 - rate (error shrinks by 'rate' per step)", yscale="log",
           title="tuned GD: (kappa-1)/(kappa+1); tuned heavy ball: (sqrt kappa-1)/(sqrt kappa+1)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def plot_rate_curves(results: dict):
    fig, axes = plt.subplots(1, 2, figsize=(14, 5), sharey=True)
    for ax, method, name in ((axes[0], "gd", "tuned GD"), (axes[1], "heavy_ball", "tuned heavy ball")):
        for kappa in results["kappa"]:
            errors = results["curves"][f"{method} kappa={kappa:g}"]
            ax.semilogy(errors, lw=1.2, label=f"kappa = {kappa:g}")
        ax.set(xscale="log", xlabel="step", title=f"{name}: ||w_t - w*|| / ||w_0 - w*||")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    return fig


def quadratic_report(cfg: DictConfig, out_dir: str | Path) -> tuple[FigureWriter, dict]:
    require(all(1 <= b <= cfg.least_squares.n for b in cfg.batch_sizes), "batch_sizes", list(cfg.batch_sizes),
            f"integers in [1, least_squares.n = {cfg.least_squares.n}]")
    require(all(k > 1 for k in cfg.kappas), "kappas", list(cfg.kappas), "numbers > 1")
    require(len(cfg.rate_window) == 2 and 1 > cfg.rate_window[0] > cfg.rate_window[1] > 0, "rate_window",
            list(cfg.rate_window), "two numbers 1 > a > b > 0")
    generator = torch.Generator().manual_seed(cfg.seed)
    ls = cfg.least_squares
    problem = LeastSquares.random(ls.n, ls.d, ls.noise, generator)
    curves = {b: sgd_curve(problem, b, cfg.epochs, cfg.points_per_epoch, generator)
              for b in sorted({*cfg.batch_sizes, ls.n})}
    rates = rates_over_kappa(cfg, generator)
    out = FigureWriter(out_dir, tensorboard=True)
    out.save(plot_gd_vs_sgd(curves, ls.n), "gd_vs_sgd")
    out.save(plot_rates(rates), "rates")
    out.save(plot_rate_curves(rates), "rate_curves")
    numbers = {"least_squares": {"L": problem.L, "L_max": problem.L_max, "f_star": problem.f_star,
                                 "final_gap": {str(b): float(gaps[-1]) for b, (_, gaps) in curves.items()},
                                 "step_size": {str(b): problem.step_size(b) for b in curves}},
               "rates": {k: v for k, v in rates.items() if k != "curves"}}
    save_json(numbers, out.out_dir / "quadratic.json")
    out.add(out.out_dir / "quadratic.json")
    return out, numbers


def print_rates(rates: dict) -> None:
    print(f"{'kappa':>8} | {'GD theory':>10} {'measured':>10} {'diff':>7} | {'HB theory':>10} {'measured':>10} "
          f"{'diff':>7}")
    for i, kappa in enumerate(rates["kappa"]):
        cells = []
        for method in ("gd", "heavy_ball"):
            theory, measured = rates[method]["theory"][i], rates[method]["measured"][i]
            cells.append(f"{theory:10.6f} {measured:10.6f} {100 * (measured / theory - 1):+6.2f}%")
        print(f"{kappa:8g} | {cells[0]} | {cells[1]}")


@command("quadratic", validate_config=False)
def main(cfg: DictConfig) -> None:
    out, numbers = quadratic_report(cfg, HydraConfig.get().runtime.output_dir)
    for b, gap in numbers["least_squares"]["final_gap"].items():
        print(f"least squares, batch {b:>5}: step {numbers['least_squares']['step_size'][b]:.4g}, "
              f"f - f* after {cfg.epochs} epochs {gap:.3e}")
    print_rates(numbers["rates"])
    print(out.report())


if __name__ == "__main__":
    run(main)
