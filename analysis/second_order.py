"""Why first-order methods dominate, measured: ``python -m analysis.second_order``.

One small problem: a one-hidden-layer MLP on an MNIST subset (images average-pooled to ``image_size``), trained full
batch (every step sees all ``samples`` examples). Each method of ``methods`` takes ``steps`` steps from the same
initialisation: GD, momentum, Adam, L-BFGS, the natural gradient with the exact Fisher (P x P, formed every step
from per-example Jacobians), K-FAC and Hessian-free (the optimizers of ``optimizers/``). Writes
``loss_vs_iterations.png`` and ``loss_vs_time.png`` (at the middle width), ``cost_per_step.png`` and prints a table:
seconds per step and the memory each method holds (its optimizer state, plus the Fisher the natural gradient
forms), at every width of ``hidden_sizes``, with the growth exponent b of cost ~ P^b fitted over the widths.
"""
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import optimizers
from analysis.figures import FigureWriter, plt
from cli.entry import command, run
from data.sources import SOURCES
from utils.errors import require

METHODS = ("gd", "momentum", "adam", "lbfgs", "natural_gradient", "kfac", "hessian_free")


def load_problem(root: str, samples: int, image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``samples`` MNIST training images (a fixed random subset), pooled to image_size^2 pixels and standardised."""
    x, y = SOURCES["mnist"](root, train=True)
    index = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:samples]
    x = F.adaptive_avg_pool2d(x[index].float() / 255, image_size).flatten(1)  # (N, image_size^2)
    return (x - x.mean()) / x.std(), y[index]


def make_model(inputs: int, hidden: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, 10))


def exact_fisher(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """F = (1/N) sum_i J_i^T (diag p_i - p_i p_i^T) J_i, the Fisher of the model's categorical distribution
    (for softmax outputs it equals the Gauss-Newton matrix), from per-example Jacobians J_i (C x P)."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def logits(p, xi):
        return torch.func.functional_call(model, p, (xi[None],))[0]

    jacobians = torch.func.vmap(torch.func.jacrev(logits), in_dims=(None, 0))(params, x)
    j = torch.cat([jacobians[name].flatten(2) for name in params], 2)  # (N, C, P)
    p = torch.func.functional_call(model, params, (x,)).softmax(1)
    hj = p[:, :, None] * j - p[:, :, None] * (p[:, :, None] * j).sum(1, keepdim=True)  # (diag p - p p^T) J
    return torch.einsum("ncp,ncq->pq", j, hj) / len(x)


def make_optimizer(name: str, model: nn.Module, x: torch.Tensor, settings: dict) -> torch.optim.Optimizer:
    params = list(model.parameters())
    if name == "natural_gradient":
        def fisher(w):  # the optimizer hands w flat; the model's parameters already hold it
            return exact_fisher(model, x)
        return optimizers.DampedNewton(params, curvature=fisher, **settings)
    if name == "kfac":
        return optimizers.KFAC(params, model=model, **settings)
    if name == "hessian_free":
        return optimizers.HessianFree(params, model=model, curvature_batch_size=len(x), **settings)
    factory = {"gd": optimizers.SGD, "momentum": optimizers.SGD, "adam": optimizers.Adam,
               "lbfgs": optimizers.LBFGS}[name]
    return factory(params, **settings)


def state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor the optimizer keeps between steps."""
    def walk(value) -> int:
        if torch.is_tensor(value):
            return value.numel() * value.element_size()
        if isinstance(value, dict):
            return sum(walk(v) for v in value.values())
        if isinstance(value, (list, tuple)):
            return sum(walk(v) for v in value)
        return 0
    return walk(optimizer.state_dict()["state"])


def run_optimizer(name: str, settings: dict, x: torch.Tensor, y: torch.Tensor, hidden: int, steps: int,
                  seed: int) -> dict:
    """``steps`` full-batch steps of one method: the loss before each step and after the last, the elapsed
    seconds at each, and the memory held (optimizer state; the natural gradient also forms a P x P Fisher)."""
    model = make_model(x.shape[1], hidden, seed)
    optimizer = make_optimizer(name, model, x, settings)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    losses, seconds, started = [closure().item()], [0.0], time.perf_counter()
    for _ in range(steps):
        optimizer.step(closure)
        seconds.append(time.perf_counter() - started)
        with torch.no_grad():
            losses.append(F.cross_entropy(model(x), y).item())
    params = sum(p.numel() for p in model.parameters())
    memory = state_bytes(optimizer) + (params ** 2 * 4 if name == "natural_gradient" else 0)
    return {"method": name, "hidden": hidden, "params": params, "losses": losses, "seconds": seconds,
            "step_seconds": seconds[-1] / steps, "memory": memory}


def growth(rows: list[dict], key: str) -> float:
    """b in cost ~ P^b: the least-squares slope of log cost against log P."""
    xs = [math.log(r["params"]) for r in rows]
    ys = [math.log(max(r[key], 1e-12)) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys)) / sum((a - mx) ** 2 for a in xs)


def plot_curves(results: list[dict], x_key: str, xlabel: str):
    figure, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        if x_key == "seconds":  # log time axis: the first-order runs finish in a fraction of a second
            ax.plot(r["seconds"][1:], r["losses"][1:], label=r["method"])
        else:
            ax.plot(range(len(r["losses"])), r["losses"], label=r["method"])
    ax.set(yscale="log", xscale="log" if x_key == "seconds" else "linear", xlabel=xlabel,
           ylabel="training loss (full batch)",
           title=f"MLP with {results[0]['params']} parameters on {results[0]['samples']} MNIST images")
    ax.legend()
    return figure


def plot_costs(table: list[dict]):
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name in dict.fromkeys(r["method"] for r in table):
        rows = [r for r in table if r["method"] == name]
        axes[0].plot([r["params"] for r in rows], [r["step_seconds"] for r in rows], "o-", label=name)
        axes[1].plot([r["params"] for r in rows], [max(r["memory"], 1) for r in rows], "o-", label=name)
    axes[0].set(xscale="log", yscale="log", xlabel="parameters P", ylabel="seconds per step")
    axes[1].set(xscale="log", yscale="log", xlabel="parameters P", ylabel="bytes held between steps")
    axes[0].legend(fontsize=8)
    return figure


def second_order_report(cfg: DictConfig, out_dir) -> list[dict]:
    """Run every method at every width, save the figures into out_dir, print the cost table; return its rows."""
    for name in cfg.methods:
        require(name in METHODS, "methods", name, "names among " + ", ".join(METHODS))
    require(len(cfg.hidden_sizes) >= 2, "hidden_sizes", list(cfg.hidden_sizes), "at least two widths")
    torch.set_num_threads(cfg.threads)
    x, y = load_problem(cfg.data_root, cfg.samples, cfg.image_size, cfg.seed)
    settings = OmegaConf.to_container(cfg.settings)
    for name in cfg.methods:  # one-time costs (first kernels, torch.func tracing) stay out of the timings
        run_optimizer(name, settings[name], x, y, cfg.hidden_sizes[0], 2, cfg.seed)
    table = [run_optimizer(name, settings[name], x, y, hidden, cfg.steps, cfg.seed)
             for hidden in cfg.hidden_sizes for name in cfg.methods]
    for row in table:
        row["samples"] = len(y)
    out = FigureWriter(out_dir)
    middle = [r for r in table if r["hidden"] == cfg.hidden_sizes[len(cfg.hidden_sizes) // 2]]
    out.save(plot_curves(middle, "steps", "iteration"), "loss_vs_iterations")
    out.save(plot_curves(middle, "seconds", "wall-clock seconds"), "loss_vs_time")
    out.save(plot_costs(table), "cost_per_step")
    sizes = [f"P={r['params']}" for r in table if r["method"] == cfg.methods[0]]
    print(f"{'method':>17} " + " ".join(f"{size:>19}" for size in sizes) + "   growth: time  memory   final loss")
    for name in cfg.methods:
        rows = [r for r in table if r["method"] == name]
        cells = " ".join(f"{r['step_seconds'] * 1e3:8.2f} ms {r['memory'] / 1024:6.0f} KiB" for r in rows)
        print(f"{name:>17} {cells}   P^{growth(rows, 'step_seconds'):<5.2f} P^{growth(rows, 'memory'):<5.2f}"
              f"  {middle[cfg.methods.index(name)]['losses'][-1]:.4f}")
    print(out.report())
    return table


@command("second_order", validate_config=False)
def main(cfg: DictConfig) -> None:
    second_order_report(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    run(main)
