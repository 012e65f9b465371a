"""The from-scratch autograd engine at work: ``python -m analysis.autograd``.

Trains a small tanh MLP built from ``analysis.reverse_mode.Value`` on a toy problem (two interleaved spirals)
with plain gradient descent, and at every ``check_every``-th step recomputes the loss and all parameter gradients
with torch.autograd (float64, same weights, same batch): the largest relative error
||g_engine - g_torch|| / ||g_torch|| over every parameter tensor and every checked step is printed and saved.
Writes ``autograd_training.png`` (loss, accuracy, the gradient error per checked step, the decision regions),
``autograd_graph.png`` (the computational graph of one small expression after backward: every node's value and
gradient) and ``autograd.json``, and the figures as TensorBoard images.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from analysis.figures import FigureWriter, plt
from analysis.reverse_mode import Value, cross_entropy, zero_grad
from cli.entry import command, run
from utils.errors import require
from utils.io import save_json


def spirals(n: int, noise: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n points on each of two interleaved spirals in the plane (classes 0 and 1), with Gaussian noise."""
    t = np.sqrt(rng.uniform(0.05, 1.0, n)) * 3 * np.pi
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / (3 * np.pi)
    x = np.concatenate([arm, -arm]) + noise * rng.standard_normal((2 * n, 2))
    return x, np.repeat([0, 1], n)


@dataclass
class MLP:
    """tanh MLP on Values: layers of (W, b) with h <- tanh(h W + b), the last layer linear (logits)."""
    layers: list[tuple[Value, Value]]

    @classmethod
    def init(cls, sizes: list[int], rng: np.random.Generator) -> "MLP":
        return cls([(Value(rng.standard_normal((i, o)) / np.sqrt(i), label=f"W{k}"), Value(np.zeros(o), label=f"b{k}"))
                    for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))])

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer]

    def __call__(self, x: Value) -> Value:
        for k, (w, b) in enumerate(self.layers):
            x = x @ w + b
            if k < len(self.layers) - 1:
                x = x.tanh()
        return x


def torch_loss_and_grads(params: list[Value], x: np.ndarray, y: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """The same network's mean cross-entropy and its parameter gradients, by torch.autograd in float64."""
    tensors = [torch.tensor(p.data, dtype=torch.float64, requires_grad=True) for p in params]
    h = torch.tensor(x, dtype=torch.float64)
    for k in range(0, len(tensors), 2):
        h = h @ tensors[k] + tensors[k + 1]
        if k < len(tensors) - 2:
            h = torch.tanh(h)
    loss = F.cross_entropy(h, torch.tensor(y))
    grads = torch.autograd.grad(loss, tensors)
    return float(loss.detach()), [g.numpy() for g in grads]


def relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(ours - reference) / max(np.linalg.norm(reference), 1e-300))


def train(cfg: DictConfig) -> dict:
    """Gradient descent on the spirals with the engine; every check_every steps, the gradients against torch."""
    rng = np.random.default_rng(cfg.seed)
    x, y = spirals(cfg.points_per_class, cfg.noise, rng)
    model = MLP.init([2, *cfg.hidden, 2], rng)
    params = model.parameters()
    history = {"step": [], "loss": [], "acc": [], "checked_step": [], "grad_error": [], "loss_error": []}
    for step in range(cfg.steps):
        zero_grad(params)
        logits = model(Value(x))
        loss = cross_entropy(logits, y)
        loss.backward()
        if step % cfg.check_every == 0 or step == cfg.steps - 1:
            ref_loss, ref_grads = torch_loss_and_grads(params, x, y)
            history["checked_step"].append(step)
            history["grad_error"].append(max(relative_error(p.grad, g) for p, g in zip(params, ref_grads)))
            history["loss_error"].append(abs(float(loss.data) - ref_loss) / abs(ref_loss))
        history["step"].append(step)
        history["loss"].append(float(loss.data))
        history["acc"].append(float((logits.data.argmax(axis=1) == y).mean()))
        for p in params:
            p.data -= cfg.lr * p.grad
    return {"model": model, "x": x, "y": y, "history": history}


def plot_training(result: dict):
    h, model, x, y = result["history"], result["model"], result["x"], result["y"]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    axes[0].plot(h["step"], h["loss"], label="loss")
    axes[0].plot(h["step"], h["acc"], label="training accuracy")
    axes[0].set(xlabel="step", title="MLP trained by the engine (gradient descent, full batch)")
    axes[1].semilogy(h["checked_step"], np.maximum(h["grad_error"], 1e-18), "o-", ms=3)
    axes[1].set(xlabel="step", ylabel="max relative error ||g - g_torch|| / ||g_torch||",
                title="gradients against torch.autograd (float64)")
    grid = np.linspace(x.min() - 0.2, x.max() + 0.2, 200)
    gx, gy = np.meshgrid(grid, grid)
    logits = model(Value(np.stack([gx.ravel(), gy.ravel()], axis=1))).data
    axes[2].contourf(gx, gy, (logits[:, 1] - logits[:, 0]).reshape(gx.shape) > 0, cmap="coolwarm", alpha=0.3)
    axes[2].scatter(x[:, 0], x[:, 1], c=y, cmap="coolwarm", s=6)
    axes[2].set(title=f"decision regions (final training accuracy {h['acc'][-1]:.3f})", aspect="equal")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend()
    return fig


def example_expression() -> Value:
    """L = tanh(a * b + c) * a + b / c: ``a`` and ``b`` are each used twice, so their gradients add up."""
    a, b, c = Value(0.8, label="a"), Value(-1.5, label="b"), Value(2.0, label="c")
    out = (a * b + c).tanh() * a + b / c
    out.label = "L"
    return out


def graph_layout(out: Value) -> dict[int, tuple[float, float]]:
    """Node id -> (x, y): x is the node's depth (longest path from a leaf), nodes of one depth spread along y."""
    order = out.topological_order()
    depth = {}
    for node in order:
        depth[id(node)] = 1 + max((depth[id(p)] for p in node.parents), default=-1)
    columns: dict[int, list[Value]] = {}
    for node in order:
        columns.setdefault(depth[id(node)], []).append(node)
    return {id(node): (d, i - (len(nodes) - 1) / 2) for d, nodes in columns.items() for i, node in enumerate(nodes)}


def plot_graph(out: Value):
    """The graph after ``out.backward()``: one box per node (op, value, gradient), arrows from parents."""
    position = graph_layout(out)
    fig, ax = plt.subplots(figsize=(13, 4.5))
    for node in out.topological_order():
        x, y = position[id(node)]
        for parent in node.parents:
            ax.annotate("", xy=(x - 0.3, y), xytext=(position[id(parent)][0] + 0.3, position[id(parent)][1]),
                        arrowprops=dict(arrowstyle="->", color="gray", lw=1))
        name = node.label or (node.op if node.parents else "const")
        ax.text(x, y, f"{name}\ndata {float(node.data):.4g}\ngrad {float(node.grad):.4g}", ha="center",
                va="center", fontsize=8, bbox=dict(boxstyle="round", fc="lightyellow" if node.parents else "lightblue"))
    xs, ys = zip(*position.values())
    ax.set(xlim=(min(xs) - 0.5, max(xs) + 0.5), ylim=(min(ys) - 0.7, max(ys) + 0.7),
           title="computational graph of L = tanh(a*b + c)*a + b/c after L.backward() (grad = dL/d node)")
    ax.axis("off")
    return fig


def autograd_report(cfg: DictConfig, out_dir: str | Path) -> tuple[FigureWriter, dict]:
    require(cfg.steps >= 1, "steps", cfg.steps, "an integer >= 1")
    require(cfg.check_every >= 1, "check_every", cfg.check_every, "an integer >= 1")
    require(cfg.lr > 0, "lr", cfg.lr, "a number > 0")
    result = train(cfg)
    expression = example_expression()
    expression.backward()
    out = FigureWriter(out_dir, tensorboard=True)
    out.save(plot_training(result), "autograd_training")
    out.save(plot_graph(expression), "autograd_graph")
    h = result["history"]
    numbers = {"steps": cfg.steps, "checked_steps": len(h["checked_step"]),
               "max_relative_grad_error": max(h["grad_error"]), "max_relative_loss_error": max(h["loss_error"]),
               "final_loss": h["loss"][-1], "final_accuracy": h["acc"][-1], "history": h}
    save_json(numbers, out.out_dir / "autograd.json")
    out.add(out.out_dir / "autograd.json")
    return out, numbers


@command("autograd", validate_config=False)
def main(cfg: DictConfig) -> None:
    out, numbers = autograd_report(cfg, HydraConfig.get().runtime.output_dir)
    print(f"trained {numbers['steps']} steps: loss {numbers['final_loss']:.4f}, training accuracy "
          f"{numbers['final_accuracy']:.3f}")
    print(f"gradients checked against torch.autograd at {numbers['checked_steps']} steps: max relative error "
          f"{numbers['max_relative_grad_error']:.3e} (loss: {numbers['max_relative_loss_error']:.3e})")
    print(out.report())


if __name__ == "__main__":
    run(main)
