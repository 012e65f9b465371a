r"""Hessian-free optimisation (Martens 2010): truncated Newton steps from conjugate gradient on Gauss-Newton products.

Each step minimises the damped quadratic model of the loss f around w,

    q(p) = g^T p + 1/2 p^T (G + lambda I) p,    G = J^T H J / B  (the Gauss-Newton matrix)

where J is the Jacobian of the logits with respect to the parameters on a curvature batch of B examples and
H = diag(softmax) - softmax softmax^T the Hessian of the cross-entropy with respect to the logits, which makes G
positive semi-definite. G is never formed: G v is one forward-mode product J v (``torch.func.jvp``) and one
reverse-mode product J^T u (``torch.func.vjp``), so a product costs about two passes over the curvature batch.

- CG (preconditioned by M = (diag(F) + lambda)^0.75, diag(F) the per-example squared gradients with labels sampled
  from the model, Martens sec. 4.7) starts from the previous solution times ``cg_decay`` and stops by Martens'
  relative-progress test: after i > k = max(10, i/10) iterations, when (q_i - q_{i-k}) / q_i < k * cg_tolerance.
- Backtracking (sec. 4.6): the iterates at i = ceil(1.3^j) are kept; f is evaluated at the last, then earlier
  ones while that lowers f; the best is taken (no step if none lowers f).
- Levenberg-Marquardt damping: rho = (f(w + p) - f(w)) / (q(p) - lambda |p|^2 / 2) compares the actual reduction
  with the undamped model's; lambda *= 3/2 when rho < 1/4, lambda *= 2/3 when rho > 3/4.

The gradient batch is the batch the closure evaluates (``data.batch_size``); the curvature batch is its first
``curvature_batch_size`` examples, taken by a hook on the model's forward pass.
"""

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as TF
from torch import Tensor
from torch.func import functional_call, jvp, vjp, vmap, grad

from optimizers.base import require
from optimizers.hooks import WeakHook


def gauss_newton_product(model: nn.Module, params: dict[str, Tensor], x: Tensor) -> Callable[[Tensor], Tensor]:
    r"""v -> G v = J^T H J v / B for the mean cross-entropy of ``model`` on the batch x, with flat v.

    ``params`` maps names to the parameters taking part; buffers (batch-norm statistics) are passed as copies,
    so products never move the model's running statistics.
    """
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [s.numel() for s in shapes]

    def logits_of(p: dict[str, Tensor]) -> Tensor:
        return functional_call(model, (p, buffers), (x,))

    logits, pullback = vjp(logits_of, params)
    probs = logits.detach().softmax(1)  # (B, C)

    def product(v: Tensor) -> Tensor:
        tangent = {n: t.view(s) for n, t, s in zip(names, v.split(sizes), shapes)}
        _, jv = jvp(logits_of, (params,), (tangent,))  # (B, C)
        hjv = (probs * jv - probs * (probs * jv).sum(1, keepdim=True)) / len(x)
        (out,) = pullback(hjv)
        return torch.cat([out[n].reshape(-1) for n in names])

    return product


def sampled_fisher_diagonal(model: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """Sum over examples of the squared per-example gradient of -log p(y|x), y drawn from the model (flat)."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    with torch.no_grad():
        y = torch.multinomial(functional_call(model, (params, buffers), (x,)).float().softmax(1), 1).squeeze(1)

    def loss(p, xi, yi):
        return TF.cross_entropy(functional_call(model, (p, buffers), (xi[None],)), yi[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g.pow(2).sum(0).reshape(-1) for g in per_example.values()])


def kept_iterations(max_iter: int, gamma: float = 1.3) -> set[int]:
    """The CG iterations whose iterates backtracking may return to: ceil(gamma^j), and the last."""
    kept, j = {max_iter}, 0
    while (i := int(-(-gamma ** j // 1))) < max_iter:
        kept.add(i)
        j += 1
    return kept


def conjugate_gradient(product: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor, preconditioner: Tensor,
                       max_iter: int, tolerance: float) -> list[tuple[int, Tensor, float]]:
    r"""Preconditioned CG on A x = b from x0, A = ``product`` (positive definite), M^-1 r = r / preconditioner.

    Returns the kept iterates (iteration, x, q(x)) with q(x) = 1/2 x^T A x - b^T x = -1/2 x^T (b + r).
    """
    x = x0.clone()
    r = b - product(x)
    y = r / preconditioner
    p, ry = y.clone(), r.dot(y)
    values, kept, out = [], kept_iterations(max_iter), []
    for i in range(1, max_iter + 1):
        ap = product(p)
        curvature = p.dot(ap)
        if curvature <= 0:  # only round-off makes a damped Gauss-Newton matrix indefinite
            break
        alpha = ry / curvature
        x.add_(p, alpha=alpha)
        r.sub_(ap, alpha=alpha)
        y = r / preconditioner
        ry_new = r.dot(y)
        p.mul_(ry_new / ry).add_(y)
        ry = ry_new
        values.append(-0.5 * x.dot(b + r).item())
        k = max(10, i // 10)
        if i in kept:
            out.append((i, x.clone(), values[-1]))
        if i > k and values[-1] < 0 and (values[-1] - values[-1 - k]) / values[-1] < k * tolerance:
            break
    if not out or out[-1][0] != len(values):
        out.append((len(values), x.clone(), values[-1] if values else 0.0))
    return out


class HessianFree(torch.optim.Optimizer):
    r"""Hessian-free (truncated Gauss-Newton) steps for a classifier trained with cross-entropy; one group.

    Args:
        params: the parameters (one group, as L-BFGS).
        model: the network; a forward hook keeps the first ``curvature_batch_size`` inputs of each step's batch.
        lr: scale of the chosen CG step (1: the step as CG and backtracking chose it).
        damping: lambda's initial value (Levenberg-Marquardt adapts it).
        curvature_batch_size: examples of the gradient batch used for the Gauss-Newton products.
        max_cg_iters: the most CG iterations per step.
        cg_tolerance: epsilon of Martens' relative-progress stopping test.
        cg_decay: the next CG run starts from this times the previous solution.
        precondition: CG preconditioned by (diag(F) + lambda)^0.75 (per-example gradients; not with batch norm).
        weight_decay: L2 penalty lambda_2 |w|^2 / 2 added to the objective (its curvature lambda_2 I too).

    State (of the first parameter): ``step``, ``damping`` (lambda now), ``previous`` (the last solution),
    ``cg_iters`` and ``rho`` of the last step.
    """

    requires_closure = True  # backtracking and damping evaluate the loss; optimizers.build gives one group
    needs_model = True       # the Gauss-Newton products re-run the model on the curvature batch

    def __init__(self, params, model: nn.Module, lr: float = 1.0, damping: float = 1.0,
                 curvature_batch_size: int = 256, max_cg_iters: int = 50, cg_tolerance: float = 5e-4,
                 cg_decay: float = 0.95, precondition: bool = True, weight_decay: float = 0.0) -> None:
        require(lr > 0.0, "learning rate", lr, "> 0")
        require(damping > 0.0, "damping", damping, "> 0")
        require(curvature_batch_size >= 1, "curvature_batch_size", curvature_batch_size, ">= 1")
        require(max_cg_iters >= 1, "max_cg_iters", max_cg_iters, ">= 1")
        require(cg_tolerance > 0.0, "cg_tolerance", cg_tolerance, "> 0")
        require(0.0 <= cg_decay <= 1.0, "cg_decay", cg_decay, "in [0, 1]")
        require(weight_decay >= 0.0, "weight_decay value", weight_decay, ">= 0")
        require(not precondition or not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()),
                "precondition", precondition, "false for a model with batch norm (per-example gradients)")
        defaults = dict(lr=lr, damping=damping, curvature_batch_size=curvature_batch_size,
                        max_cg_iters=max_cg_iters, cg_tolerance=cg_tolerance, cg_decay=cg_decay,
                        precondition=precondition, weight_decay=weight_decay)
        super().__init__(params, defaults)
        require(len(self.param_groups) == 1, "param_groups", len(self.param_groups), "one group")
        self.model = model
        ids = {id(p) for p in self.param_groups[0]["params"]}
        self.names = {name: p for name, p in model.named_parameters() if id(p) in ids}
        self._owned = {id(model)}
        self._curvature_batch: Tensor | None = None
        model.register_forward_hook(WeakHook(self, "_keep_curvature_batch"))

    def _keep_curvature_batch(self, model: nn.Module, inputs: tuple, output: Tensor) -> None:
        if self._curvature_batch is None and torch.is_grad_enabled():
            self._curvature_batch = inputs[0][:self.defaults["curvature_batch_size"]].detach()

    @property
    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    def _flat(self, tensors) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    @torch.no_grad()
    def _set(self, flat: Tensor) -> None:
        torch._foreach_copy_(self._params, [v.view_as(p) for p, v in zip(
            self._params, flat.split([p.numel() for p in self._params]))])

    def step(self, closure: Callable[[], Tensor]) -> Tensor:
        """One Hessian-free step; ``closure`` clears the gradients, computes the loss, calls backward, returns it."""
        group = self.param_groups[0]
        state = self.state[self._params[0]]
        lam = state.get("damping", group["damping"])
        self._curvature_batch = None
        loss0 = closure()
        with torch.no_grad():
            w = self._flat(p.detach() for p in self._params).clone()
            g = self._flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params)
            wd = group["weight_decay"]
            f0 = float(loss0) + 0.5 * wd * w.dot(w).item()
            g = g + wd * w
        x = self._curvature_batch
        params = {name: p.detach() for name, p in self.names.items()}
        gn = gauss_newton_product(self.model, params, x)
        product = lambda v: gn(v) + (lam + wd) * v  # noqa: E731
        preconditioner = ((sampled_fisher_diagonal(self.model, params, x) + lam) ** 0.75
                          if group["precondition"] else torch.ones_like(w))
        previous = state.get("previous", torch.zeros_like(w))
        iterates = conjugate_gradient(product, -g, group["cg_decay"] * previous, preconditioner,
                                      group["max_cg_iters"], group["cg_tolerance"])

        def loss_at(p: Tensor) -> float:
            self._set(w + group["lr"] * p)
            return closure().item() + 0.5 * wd * (w + group["lr"] * p).pow(2).sum().item()

        best = (len(iterates) - 1, loss_at(iterates[-1][1]))
        for j in range(len(iterates) - 2, -1, -1):  # earlier iterates while they lower f
            value = loss_at(iterates[j][1])
            if value >= best[1]:
                break
            best = (j, value)
        _, p, model_value = iterates[best[0]]
        reduction = model_value - 0.5 * lam * p.dot(p).item()  # the undamped model's predicted change
        rho = (best[1] - f0) / reduction if reduction < 0 else -1.0
        lam = lam * 1.5 if rho < 0.25 else lam * 2 / 3 if rho > 0.75 else lam
        self._set(w + group["lr"] * p if best[1] < f0 else w)
        state.update(step=state.get("step", 0) + 1, damping=lam, previous=iterates[-1][1], rho=rho,
                     cg_iters=iterates[-1][0])
        return loss0
