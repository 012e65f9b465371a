"""L-BFGS with an optional strong-Wolfe line search; a drop-in for `torch.optim.LBFGS` (same numerics)."""

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from optimizers import functional as F
from optimizers.base import check, require

# A point on the line w + t d: (t, loss, flat gradient, directional derivative g^T d).
Point = tuple[float, float, Tensor, float]


def cubic_minimizer(a: Point, b: Point, bounds: tuple[float, float] | None = None) -> float:
    """Minimiser of the cubic through two points with their slopes (Nocedal & Wright eq. 3.59), clipped to
    `bounds` (default: the interval between the points); the midpoint of `bounds` when the cubic has none."""
    (x1, f1, _, g1), (x2, f2, _, g2) = sorted([a, b], key=lambda point: point[0])
    low, high = bounds if bounds is not None else (x1, x2)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1 * d1 - g1 * g2
    if d2_square < 0:
        return (low + high) / 2
    d2 = math.sqrt(d2_square)
    return min(max(x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2)), low), high)


def strong_wolfe(evaluate: Callable[[float], tuple[float, Tensor]], d: Tensor, start: Point, t: float,
                 c1: float = 1e-4, c2: float = 0.9, tolerance_change: float = 1e-9,
                 max_ls: int = 25) -> tuple[Point, int]:
    """Step t along d satisfying the strong Wolfe conditions (Nocedal & Wright, Algorithms 3.5 and 3.6)

        f(t) <= f(0) + c1 t f'(0)     (sufficient decrease)
        |f'(t)| <= c2 |f'(0)|         (curvature)

    `evaluate(t)` returns the loss and flat gradient at w + t d; `start` is the point t = 0. First extrapolate
    by cubic steps until an interval brackets an acceptable t, then shrink it ("zoom"), each trial a cubic
    minimiser kept at least 10% of the interval away from its ends. Returns the best point and the evaluations.
    """
    f0, gtd0 = start[1], start[3]
    d_norm = d.abs().max().item()

    def point(t: float) -> Point:
        f, g = evaluate(t)
        return t, f, g, g.dot(d).item()

    def sufficient_decrease(p: Point) -> bool:
        return p[1] <= f0 + c1 * p[0] * gtd0

    prev, new = start, point(t)
    evals, ls_iter, done = 1, 0, False
    while ls_iter < max_ls:
        if not sufficient_decrease(new) or (ls_iter > 1 and new[1] >= prev[1]):
            bracket = [prev, new]
            break
        if abs(new[3]) <= -c2 * gtd0:
            bracket, done = [new], True
            break
        if new[3] >= 0:
            bracket = [prev, new]
            break
        t = cubic_minimizer(prev, new, bounds=(new[0] + 0.01 * (new[0] - prev[0]), new[0] * 10))
        prev, new = new, point(t)
        evals += 1
        ls_iter += 1
    else:
        bracket = [start, new]

    low, high = (0, 1) if bracket[0][1] <= bracket[-1][1] else (1, 0)
    insufficient_progress = False
    while not done and ls_iter < max_ls:
        ends = (min(bracket[0][0], bracket[1][0]), max(bracket[0][0], bracket[1][0]))
        if (ends[1] - ends[0]) * d_norm < tolerance_change:
            break
        t = cubic_minimizer(*bracket)
        margin = 0.1 * (ends[1] - ends[0])
        if min(ends[1] - t, t - ends[0]) < margin:
            if insufficient_progress or t >= ends[1] or t <= ends[0]:
                t = ends[1] - margin if abs(t - ends[1]) < abs(t - ends[0]) else ends[0] + margin
                insufficient_progress = False
            else:
                insufficient_progress = True
        else:
            insufficient_progress = False
        new = point(t)
        evals += 1
        ls_iter += 1
        if not sufficient_decrease(new) or new[1] >= bracket[low][1]:
            bracket[high] = new
            low, high = (0, 1) if bracket[0][1] <= bracket[1][1] else (1, 0)
        else:
            if abs(new[3]) <= -c2 * gtd0:
                done = True
            elif new[3] * (bracket[high][0] - bracket[low][0]) >= 0:
                bracket[high] = bracket[low]
            bracket[low] = new
    return bracket[low], evals


class LBFGS(Optimizer):
    r"""Limited-memory BFGS (Nocedal & Wright, Algorithm 7.5), closure-based, one parameter group.

    Each `step(closure)` runs up to `max_iter` iterations on the flattened parameters w:

    .. math::
        d_k = -H_k g_k \text{ (two-loop recursion over the last m pairs, see }
            \text{:func:`optimizers.functional.lbfgs_direction`)} \\
        w_{k+1} = w_k + t_k d_k, \quad s_k = t_k d_k, \; y_k = g_{k+1} - g_k \text{ (kept if } y_k^T s_k > 10^{-10})

    with t_k = lr (the first iteration ever: min(1, 1/||g||_1) lr), or chosen by a strong-Wolfe line search.
    It stops on max_iter, max_eval, max |g| <= tolerance_grad, or a step or loss change below tolerance_change.

    Args:
        params: parameters (a single group).
        lr: step length t (initial trial step of the line search).
        max_iter: iterations per `step` call.
        max_eval: loss evaluations per `step` call (default max_iter * 5 // 4).
        tolerance_grad: stop when the largest gradient entry is at most this.
        tolerance_change: stop when the step or the loss change is smaller than this.
        history_size: m, the number of curvature pairs kept.
        line_search_fn: None (fixed step lr) or "strong_wolfe".
        maximize: ascend the objective instead of descending it.

    State (of the first parameter, as in torch): ``func_evals``, ``n_iter``, ``d``, ``t``, ``old_dirs`` (y),
    ``old_stps`` (s), ``ro``, ``H_diag``, ``prev_flat_grad``, ``prev_loss``.
    """

    requires_closure = True  # `step` needs a closure; optimizers.build gives it one group of every parameter

    def __init__(self, params, lr: float = 1, max_iter: int = 20, max_eval: int | None = None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9, history_size: int = 100,
                 line_search_fn: str | None = None, *, maximize: bool = False) -> None:
        max_eval = max_iter * 5 // 4 if max_eval is None else max_eval
        check("lr", lr, "learning rate")
        check("max_iter", max_iter)
        check("max_eval", max_eval)
        check("tolerance_grad", tolerance_grad)
        check("tolerance_change", tolerance_change)
        check("history_size", history_size)
        require(line_search_fn in (None, "strong_wolfe"), "line_search_fn", line_search_fn,
                "None or 'strong_wolfe'")
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, history_size=history_size,
                        line_search_fn=line_search_fn, maximize=maximize)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError(f"LBFGS takes one parameter group, got {len(self.param_groups)}")

    @property
    def _params(self) -> list[Tensor]:
        return self.param_groups[0]["params"]

    def _flat_grad(self) -> Tensor:
        grad = torch.cat([p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel())
                          for p in self._params])
        return grad.neg_() if self.param_groups[0]["maximize"] else grad

    def _move(self, t: float, d: Tensor) -> None:
        """w <- w + t d over the flattened parameters."""
        for p, u in zip(self._params, d.split([p.numel() for p in self._params])):
            p.add_(u.view_as(p), alpha=t)

    def _evaluate(self, closure: Callable[[], Tensor]) -> tuple[float, Tensor]:
        loss = float(closure())
        return (-loss if self.param_groups[0]["maximize"] else loss), self._flat_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:
        """Up to max_iter L-BFGS iterations; `closure` clears the gradients, computes the loss, calls backward
        and returns the loss. Returns the loss from the first evaluation."""
        group = self.param_groups[0]
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tolerance_grad, tolerance_change = group["tolerance_grad"], group["tolerance_change"]
        closure = torch.enable_grad()(closure)
        state = self.state[self._params[0]]
        state.setdefault("func_evals", 0)
        state.setdefault("n_iter", 0)

        orig_loss = closure()
        loss = -float(orig_loss) if group["maximize"] else float(orig_loss)
        grad = self._flat_grad()
        evals = 1
        state["func_evals"] += 1
        converged = grad.abs().max() <= tolerance_grad
        if converged:
            return orig_loss

        d, t, old_dirs, old_stps, ro, h_diag, prev_grad, prev_loss = (state.get(key) for key in (
            "d", "t", "old_dirs", "old_stps", "ro", "H_diag", "prev_flat_grad", "prev_loss"))
        for n_iter in range(1, max_iter + 1):
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d, old_dirs, old_stps, ro, h_diag = grad.neg(), [], [], [], 1
            else:
                y, s = grad.sub(prev_grad), d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:  # curvature condition: the pair keeps H positive definite
                    if len(old_dirs) == group["history_size"]:
                        del old_dirs[0], old_stps[0], ro[0]
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    h_diag = ys / y.dot(y)
                d = F.lbfgs_direction(grad, old_dirs, old_stps, ro, h_diag)
            prev_grad, prev_loss = grad.clone(), loss
            t = min(1.0, 1.0 / grad.abs().sum().item()) * lr if state["n_iter"] == 1 else lr
            gtd = grad.dot(d).item()
            if gtd > -tolerance_change:  # not a descent direction
                break

            if group["line_search_fn"] == "strong_wolfe":
                start = [p.clone(memory_format=torch.contiguous_format) for p in self._params]

                def evaluate(trial: float) -> tuple[float, Tensor]:
                    self._move(trial, d)
                    result = self._evaluate(closure)
                    torch._foreach_copy_(self._params, start)
                    return result

                (t, loss, grad, _), ls_evals = strong_wolfe(
                    evaluate, d, (0.0, loss, grad, gtd), t, max_ls=max_eval - evals)
                self._move(t, d)
                converged = grad.abs().max() <= tolerance_grad
            else:
                self._move(t, d)
                ls_evals = 0
                if n_iter != max_iter:
                    loss, grad = self._evaluate(closure)
                    converged = grad.abs().max() <= tolerance_grad
                    ls_evals = 1
            evals += ls_evals
            state["func_evals"] += ls_evals

            if (n_iter == max_iter or evals >= max_eval or converged
                    or d.mul(t).abs().max() <= tolerance_change or abs(loss - prev_loss) < tolerance_change):
                break

        state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=h_diag,
                     prev_flat_grad=prev_grad, prev_loss=prev_loss)
        return orig_loss
