"""Optimizer paths on 2-D test functions, driven by the training optimizers.

Each optimizer is a ``configs/optimizer/*.yaml`` entry instantiated by Hydra over one ``nn.Parameter`` of shape
(2,) in float64, with the function's LR and the ``common`` overrides set (configs/toy.yaml: no weight decay, one
L-BFGS iteration per step). Every optimizer steps through a closure that re-evaluates f and its gradient, so
L-BFGS runs on the same loop as SGD: w_{t+1} = step(w_t, grad f(w_t)). A path stops early when it diverges
(|w| > 1e6 or a non-finite f). Second-order entries name their curvature (``curvature: hessian``: Newton's method
with the exact Hessian from autograd; ``curvature: fisher``: the natural gradient, only on functions that define a
distribution and so a Fisher information).
"""
import copy
from dataclasses import dataclass

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from analysis.toy.functions import ToyFunction
from utils.errors import require

ESCAPE = 1e6  # |w| beyond this counts as diverged


@dataclass
class Trajectory:
    optimizer: str
    points: torch.Tensor  # (steps + 1, 2) float64, the start included
    losses: torch.Tensor  # (steps + 1,) f at each point
    diverged: bool


def with_overrides(cfg: dict, values: dict) -> dict:
    """A copy of an optimizer config with ``values`` set wherever the key exists (Lookahead's ``base`` too)."""
    cfg = copy.deepcopy(cfg)
    cfg.pop("decay_norm_and_bias", None)  # a policy of optimizers.build, not a constructor argument
    for key, value in values.items():
        if key in cfg:
            cfg[key] = value
    if isinstance(cfg.get("base"), dict):
        cfg["base"] = with_overrides(cfg["base"], values)
    return cfg


def curvature_of(fn: ToyFunction, kind: str):
    """w -> the exact Hessian of fn.f (``hessian``) or fn's Fisher information (``fisher``)."""
    require(kind in ("hessian", "fisher"), "curvature", kind, "hessian or fisher")
    require(kind == "hessian" or fn.fisher is not None, "curvature", kind,
            f"hessian on {fn.name}, which defines no distribution")
    return (lambda w: torch.autograd.functional.hessian(fn.f, w)) if kind == "hessian" else fn.fisher


def applies_to(fn: ToyFunction, optimizer_cfg: dict) -> bool:
    """Every optimizer runs on every function, except the natural gradient on those without a distribution."""
    return optimizer_cfg.get("curvature") != "fisher" or fn.fisher is not None


def optimize(fn: ToyFunction, optimizer_cfg: dict, start, steps: int, name: str = "") -> Trajectory:
    """Run ``steps`` optimizer steps on fn from ``start``; ``optimizer_cfg`` is a ``_partial_`` config."""
    w = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    optimizer_cfg = dict(optimizer_cfg)
    kind = optimizer_cfg.pop("curvature", None)
    optimizer = instantiate(optimizer_cfg)([w], **({} if kind is None else {"curvature": curvature_of(fn, kind)}))

    def closure():
        optimizer.zero_grad()
        loss = fn.f(w)
        loss.backward()
        return loss

    points, losses = [w.detach().clone()], [fn.f(w).detach()]
    for _ in range(steps):
        optimizer.step(closure)
        with torch.no_grad():
            loss = fn.f(w)
        if not torch.isfinite(loss) or w.abs().max() > ESCAPE:
            return Trajectory(name, torch.stack(points), torch.stack(losses), True)
        points.append(w.detach().clone())
        losses.append(loss)
    return Trajectory(name, torch.stack(points), torch.stack(losses), False)


def paths_on(fn: ToyFunction, optimizers: dict[str, dict], lrs: dict[str, float], start, steps: int,
             common: dict) -> list[Trajectory]:
    """One path per optimizer that applies to fn, each with its LR for this function and the ``common`` overrides."""
    optimizers = {name: cfg for name, cfg in optimizers.items() if applies_to(fn, cfg)}
    for name in optimizers:
        require(name in lrs, f"setups.{fn.name}.lr.{name}", None, "a learning rate for every optimizer run")
    return [optimize(fn, with_overrides(cfg, {**common, "lr": lrs[name]}), start, steps, name)
            for name, cfg in optimizers.items()]


def selected_optimizers(cfg: DictConfig) -> dict[str, dict]:
    """The ``optimizers.<name>`` configs named in ``only`` (all of them when ``only`` is null)."""
    every = OmegaConf.to_container(cfg.optimizers, resolve=True)
    names = list(every) if cfg.only is None else list(cfg.only)
    for name in names:
        require(name in every, "only", name, "names among " + ", ".join(every))
    return {name: every[name] for name in names}
