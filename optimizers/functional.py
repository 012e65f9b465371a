"""Update rules as plain tensor arithmetic, shared by the optimizer classes and the toy-function lab.

Every rule takes lists (parameters, gradients, state tensors) and keyword-only hyperparameters, updates the
parameters and state in place and never writes to the gradients. As in torch/optim, each rule ``f`` is a
public function that picks one of two implementations computing the same numbers:

- ``_single_tensor_f`` (``foreach=False``): one tensor at a time, to be read next to the equations in the
  docstring;
- ``_foreach_f`` (``foreach=True``, the default): multi-tensor ``torch._foreach_*`` kernels, one launch per
  operation for the whole list. Scalars that depend on the step (bias corrections) are folded into as few passes
  as possible.

Notation: w parameters, g gradient (negated when ``maximize``), eta learning rate, lambda weight decay,
t the step count after increment (state ``step``, a float tensor, as in torch.optim).
"""

import math

import torch
from torch import Tensor


def _decayed_grads(params: list[Tensor], grads: list[Tensor], weight_decay: float,
                   maximize: bool) -> list[Tensor]:
    """g = +-grad + lambda*w over lists; returns new tensors when anything changes, never writes `grads`."""
    if maximize:
        grads = torch._foreach_neg(grads)
        if weight_decay:
            torch._foreach_add_(grads, params, alpha=weight_decay)
    elif weight_decay:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    return grads


def _shrink(params: list[Tensor], factor: float, foreach: bool) -> None:
    """Decoupled weight decay: w <- (1 - eta*lambda) w, with `factor` = 1 - eta*lambda."""
    if foreach:
        torch._foreach_mul_(params, factor)
    else:
        for w in params:
            w.mul_(factor)


def _increment(steps: list[Tensor], foreach: bool) -> list[float]:
    """t <- t + 1 in the `step` tensors; returns the new values as Python floats."""
    if foreach:
        torch._foreach_add_(steps, 1.0)
    else:
        for step in steps:
            step += 1
    return [step.item() for step in steps]


def sgd(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor | None], *, lr: float,
        momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
        maximize: bool = False, lr_in_velocity: bool = False, foreach: bool = True) -> None:
    r"""Stochastic gradient descent with heavy-ball or Nesterov momentum (PyTorch's form).

    .. math::
        g_t = \nabla f(w_{t-1}) + \lambda w_{t-1} \\
        v_t = \mu v_{t-1} + (1 - \tau) g_t \quad (v_1 = g_1) \\
        d_t = g_t + \mu v_t \text{ (Nesterov) or } v_t \\
        w_t = w_{t-1} - \eta d_t

    With ``momentum=0`` this is plain SGD, w <- w - eta*g. ``lr_in_velocity=True`` gives the textbook form
    (Sutskever et al. 2013) in which the velocity carries the step size: v_t = mu v_{t-1} + (1 - tau) eta g_t,
    w_t = w_{t-1} - d_t with d_t = eta g_t + mu v_t (Nesterov) or v_t. Both are the same iteration while eta is
    constant; when a schedule changes eta, the textbook velocity keeps the old step sizes in its memory.

    ``momentum_buffers`` holds v per parameter, ``None`` before the first step (filled in place).
    """
    (_foreach_sgd if foreach else _single_tensor_sgd)(params, grads, momentum_buffers, lr=lr, momentum=momentum,
                                                      dampening=dampening, weight_decay=weight_decay,
                                                      nesterov=nesterov, maximize=maximize,
                                                      lr_in_velocity=lr_in_velocity)


def _single_tensor_sgd(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor | None], *, lr: float,
                       momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                       maximize: bool = False, lr_in_velocity: bool = False) -> None:
    """:func:`sgd` one tensor at a time, as the equations read."""
    for i, (w, g) in enumerate(zip(params, grads)):
        g = -g if maximize else g
        if weight_decay:
            g = g.add(w, alpha=weight_decay)
        if lr_in_velocity:
            g = g * lr
        if momentum:
            v = momentum_buffers[i]
            if v is None:
                v = momentum_buffers[i] = g.clone()
            else:
                v.mul_(momentum).add_(g, alpha=1 - dampening)
            g = g.add(v, alpha=momentum) if nesterov else v
        w.add_(g, alpha=-1.0 if lr_in_velocity else -lr)


def _foreach_sgd(params: list[Tensor], grads: list[Tensor], momentum_buffers: list[Tensor | None], *, lr: float,
                 momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
                 maximize: bool = False, lr_in_velocity: bool = False) -> None:
    """:func:`sgd` with multi-tensor ``torch._foreach_*`` kernels: one launch per operation."""
    given = grads
    grads = _decayed_grads(params, grads, weight_decay, maximize)
    if lr_in_velocity:
        grads, lr = torch._foreach_mul(grads, lr), 1.0
    if momentum:
        if all(v is not None for v in momentum_buffers):
            torch._foreach_mul_(momentum_buffers, momentum)
            torch._foreach_add_(momentum_buffers, grads, alpha=1 - dampening)
        else:
            for i, g in enumerate(grads):
                if momentum_buffers[i] is None:
                    momentum_buffers[i] = g.clone()
                else:
                    momentum_buffers[i].mul_(momentum).add_(g, alpha=1 - dampening)
        if not nesterov:
            grads = momentum_buffers
        elif grads is given:  # never write into the caller's gradients
            grads = torch._foreach_add(grads, momentum_buffers, alpha=momentum)
        else:
            torch._foreach_add_(grads, momentum_buffers, alpha=momentum)
    torch._foreach_add_(params, grads, alpha=-lr)


def rmsprop(params: list[Tensor], grads: list[Tensor], square_avgs: list[Tensor], grad_avgs: list[Tensor],
            momentum_buffers: list[Tensor], state_steps: list[Tensor], *, lr: float, alpha: float = 0.99,
            eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
            maximize: bool = False, eps_inside_sqrt: bool = False, foreach: bool = True) -> None:
    r"""RMSprop (Hinton, Lecture 6e), optionally centered (Graves 2013) and with momentum.

    .. math::
        g_t = \nabla f(w_{t-1}) + \lambda w_{t-1} \\
        s_t = \alpha s_{t-1} + (1 - \alpha) g_t^2 \\
        \bar g_t = \alpha \bar g_{t-1} + (1 - \alpha) g_t \quad
            \text{(centered only; } \tilde s_t = s_t - \bar g_t^2 \text{, else } \tilde s_t = s_t) \\
        r_t = \sqrt{\tilde s_t} + \epsilon \quad \text{(PyTorch; } \sqrt{\tilde s_t + \epsilon}
            \text{ with eps\_inside\_sqrt=True, the textbook form)} \\
        b_t = \mu b_{t-1} + g_t / r_t, \quad w_t = w_{t-1} - \eta b_t \quad (\mu > 0) \\
        w_t = w_{t-1} - \eta g_t / r_t \quad (\mu = 0)

    ``grad_avgs`` (gbar) is used only when centered, ``momentum_buffers`` (b) only when momentum > 0;
    ``state_steps`` only counts steps.
    """
    (_foreach_rmsprop if foreach else _single_tensor_rmsprop)(params, grads, square_avgs, grad_avgs,
                                                              momentum_buffers, state_steps, lr=lr, alpha=alpha,
                                                              eps=eps, weight_decay=weight_decay, momentum=momentum,
                                                              centered=centered, maximize=maximize,
                                                              eps_inside_sqrt=eps_inside_sqrt)


def _single_tensor_rmsprop(params: list[Tensor], grads: list[Tensor], square_avgs: list[Tensor],
                           grad_avgs: list[Tensor], momentum_buffers: list[Tensor], state_steps: list[Tensor], *,
                           lr: float, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                           momentum: float = 0.0, centered: bool = False, maximize: bool = False,
                           eps_inside_sqrt: bool = False) -> None:
    """:func:`rmsprop` one tensor at a time, as the equations read."""
    for i, (w, g, s, step) in enumerate(zip(params, grads, square_avgs, state_steps)):
        step += 1
        g = -g if maximize else g
        if weight_decay:
            g = g.add(w, alpha=weight_decay)
        s.mul_(alpha).addcmul_(g, g, value=1 - alpha)
        if centered:
            grad_avgs[i].lerp_(g, 1 - alpha)
            s = s.addcmul(grad_avgs[i], grad_avgs[i], value=-1)
        r = s.add(eps).sqrt_() if eps_inside_sqrt else s.sqrt().add_(eps)
        if momentum > 0:
            w.add_(momentum_buffers[i].mul_(momentum).addcdiv_(g, r), alpha=-lr)
        else:
            w.addcdiv_(g, r, value=-lr)


def _foreach_rmsprop(params: list[Tensor], grads: list[Tensor], square_avgs: list[Tensor], grad_avgs: list[Tensor],
                     momentum_buffers: list[Tensor], state_steps: list[Tensor], *, lr: float, alpha: float = 0.99,
                     eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                     maximize: bool = False, eps_inside_sqrt: bool = False) -> None:
    """:func:`rmsprop` with multi-tensor ``torch._foreach_*`` kernels: one launch per operation."""
    torch._foreach_add_(state_steps, 1.0)
    grads = _decayed_grads(params, grads, weight_decay, maximize)
    torch._foreach_mul_(square_avgs, alpha)
    torch._foreach_addcmul_(square_avgs, grads, grads, value=1 - alpha)
    if centered:
        torch._foreach_lerp_(grad_avgs, grads, 1 - alpha)
        r = torch._foreach_addcmul(square_avgs, grad_avgs, grad_avgs, value=-1)
        if eps_inside_sqrt:
            torch._foreach_add_(r, eps)
        torch._foreach_sqrt_(r)
    else:
        r = torch._foreach_add(square_avgs, eps) if eps_inside_sqrt else square_avgs
        r = torch._foreach_sqrt(r)
    if not eps_inside_sqrt:
        torch._foreach_add_(r, eps)
    if momentum > 0:
        torch._foreach_mul_(momentum_buffers, momentum)
        torch._foreach_addcdiv_(momentum_buffers, grads, r)
        torch._foreach_add_(params, momentum_buffers, alpha=-lr)
    else:
        torch._foreach_addcdiv_(params, grads, r, value=-lr)


def adagrad(params: list[Tensor], grads: list[Tensor], state_sums: list[Tensor], state_steps: list[Tensor], *,
            lr: float, lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10,
            maximize: bool = False, foreach: bool = True) -> None:
    r"""Adagrad (Duchi et al. 2011) with PyTorch's learning-rate decay.

    .. math::
        g_t = \nabla f(w_{t-1}) + \lambda w_{t-1} \\
        \eta_t = \eta / (1 + (t - 1) \delta) \\
        s_t = s_{t-1} + g_t^2 \quad (s_0 = \text{initial\_accumulator\_value}) \\
        w_t = w_{t-1} - \eta_t g_t / (\sqrt{s_t} + \epsilon)
    """
    (_foreach_adagrad if foreach else _single_tensor_adagrad)(params, grads, state_sums, state_steps, lr=lr,
                                                              lr_decay=lr_decay, weight_decay=weight_decay, eps=eps,
                                                              maximize=maximize)


def _single_tensor_adagrad(params: list[Tensor], grads: list[Tensor], state_sums: list[Tensor],
                           state_steps: list[Tensor], *, lr: float, lr_decay: float = 0.0, weight_decay: float = 0.0,
                           eps: float = 1e-10, maximize: bool = False) -> None:
    """:func:`adagrad` one tensor at a time, as the equations read."""
    ts = _increment(state_steps, foreach=False)
    step_sizes = [-lr / (1 + (t - 1) * lr_decay) for t in ts]
    for w, g, s, step_size in zip(params, grads, state_sums, step_sizes):
        g = -g if maximize else g
        if weight_decay:
            g = g.add(w, alpha=weight_decay)
        s.addcmul_(g, g)
        w.addcdiv_(g, s.sqrt().add_(eps), value=step_size)


def _foreach_adagrad(params: list[Tensor], grads: list[Tensor], state_sums: list[Tensor], state_steps: list[Tensor], *,
                     lr: float, lr_decay: float = 0.0, weight_decay: float = 0.0, eps: float = 1e-10,
                     maximize: bool = False) -> None:
    """:func:`adagrad` with multi-tensor ``torch._foreach_*`` kernels: one launch per operation."""
    ts = _increment(state_steps, foreach=True)
    step_sizes = [-lr / (1 + (t - 1) * lr_decay) for t in ts]
    grads = _decayed_grads(params, grads, weight_decay, maximize)
    torch._foreach_addcmul_(state_sums, grads, grads)
    std = torch._foreach_sqrt(state_sums)
    torch._foreach_add_(std, eps)
    torch._foreach_addcdiv_(params, grads, std, step_sizes)


def adam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
         max_exp_avg_sqs: list[Tensor], state_steps: list[Tensor], *, lr: float, beta1: float = 0.9,
         beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
         decoupled_weight_decay: bool = False, maximize: bool = False, foreach: bool = True) -> None:
    r"""Adam (Kingma & Ba 2015), AMSGrad (Reddi et al. 2018) and AdamW (Loshchilov & Hutter 2019).

    .. math::
        g_t = \nabla f(w_{t-1}) + \lambda w_{t-1} \quad \text{(Adam; AdamW instead sets }
            w_{t-1} \leftarrow (1 - \eta\lambda) w_{t-1}\text{)} \\
        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \hat v_t = \max(\hat v_{t-1}, v_t) \text{ (AMSGrad) or } v_t \\
        w_t = w_{t-1} - \eta \frac{m_t / (1 - \beta_1^t)}{\sqrt{\hat v_t / (1 - \beta_2^t)} + \epsilon}

    The per-tensor path computes the last line as written. The foreach path uses the paper's equivalent
    "efficient version" with one pass fewer, w_t = w_{t-1} - eta_t m_t / (sqrt(v_t) + eps_t) where
    eta_t = eta sqrt(1 - beta2^t) / (1 - beta1^t) and eps_t = eps sqrt(1 - beta2^t).
    ``max_exp_avg_sqs`` is used only with amsgrad.
    """
    (_foreach_adam if foreach else _single_tensor_adam)(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs,
                                                        state_steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                                                        weight_decay=weight_decay, amsgrad=amsgrad,
                                                        decoupled_weight_decay=decoupled_weight_decay,
                                                        maximize=maximize)


def _single_tensor_adam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                        max_exp_avg_sqs: list[Tensor], state_steps: list[Tensor], *, lr: float, beta1: float = 0.9,
                        beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                        decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
    """:func:`adam` one tensor at a time, as the equations read."""
    ts = _increment(state_steps, foreach=False)
    if weight_decay and decoupled_weight_decay:
        _shrink(params, 1 - lr * weight_decay, foreach=False)
    coupled_decay = 0.0 if decoupled_weight_decay else weight_decay
    for i, (w, g, m, v, t) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, ts)):
        g = -g if maximize else g
        if coupled_decay:
            g = g.add(w, alpha=coupled_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if amsgrad:
            v = torch.maximum(max_exp_avg_sqs[i], v, out=max_exp_avg_sqs[i])
        m_hat = m / (1 - beta1**t)
        v_hat = v / (1 - beta2**t)
        w.addcdiv_(m_hat, v_hat.sqrt_().add_(eps), value=-lr)


def _foreach_adam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                  max_exp_avg_sqs: list[Tensor], state_steps: list[Tensor], *, lr: float, beta1: float = 0.9,
                  beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False,
                  decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
    """:func:`adam` with multi-tensor ``torch._foreach_*`` kernels: one launch per operation."""
    ts = _increment(state_steps, foreach=True)
    if weight_decay and decoupled_weight_decay:
        _shrink(params, 1 - lr * weight_decay, foreach=True)
    coupled_decay = 0.0 if decoupled_weight_decay else weight_decay
    grads = _decayed_grads(params, grads, coupled_decay, maximize)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    if amsgrad:
        torch._foreach_maximum_(max_exp_avg_sqs, exp_avg_sqs)
    denom = torch._foreach_sqrt(max_exp_avg_sqs if amsgrad else exp_avg_sqs)
    bc2_sqrt = [math.sqrt(1 - beta2**t) for t in ts]
    torch._foreach_add_(denom, [eps * b for b in bc2_sqrt])
    torch._foreach_addcdiv_(params, exp_avgs, denom, [-lr * b / (1 - beta1**t) for b, t in zip(bc2_sqrt, ts)])


def radam_step_size(t: float, *, lr: float, beta1: float, beta2: float) -> tuple[float, bool]:
    r"""RAdam's step size for m_t and whether the variance is rectified at step t (Liu et al. 2020).

    .. math::
        \rho_\infty = 2 / (1 - \beta_2) - 1, \quad
        \rho_t = \rho_\infty - 2 t \beta_2^t / (1 - \beta_2^t) \\
        r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}}

    Returns (eta r_t sqrt(1 - beta2^t) / (1 - beta1^t), True) when rho_t > 5, else (eta / (1 - beta1^t), False).
    """
    bias_correction1 = 1 - beta1**t
    bias_correction2 = 1 - beta2**t
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * t * beta2**t / bias_correction2
    if rho_t <= 5:
        return lr / bias_correction1, False
    rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    return lr * rect * math.sqrt(bias_correction2) / bias_correction1, True


def radam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
          state_steps: list[Tensor], *, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 0.0, decoupled_weight_decay: bool = False, maximize: bool = False,
          foreach: bool = True) -> None:
    r"""Rectified Adam (Liu et al. 2020): SGD with momentum until the variance estimate is trustworthy.

    .. math::
        g_t, m_t, v_t \text{ as in Adam (coupled or decoupled weight decay)} \\
        w_t = w_{t-1} - \eta r_t \frac{\sqrt{1 - \beta_2^t}}{1 - \beta_1^t} \frac{m_t}{\sqrt{v_t} + \epsilon}
            \quad \text{if } \rho_t > 5 \\
        w_t = w_{t-1} - \frac{\eta}{1 - \beta_1^t} m_t \quad \text{otherwise}

    with rho_t and r_t from :func:`radam_step_size`.
    """
    (_foreach_radam if foreach else _single_tensor_radam)(params, grads, exp_avgs, exp_avg_sqs, state_steps, lr=lr,
                                                          beta1=beta1, beta2=beta2, eps=eps,
                                                          weight_decay=weight_decay,
                                                          decoupled_weight_decay=decoupled_weight_decay,
                                                          maximize=maximize)


def _single_tensor_radam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                         state_steps: list[Tensor], *, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                         eps: float = 1e-8, weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                         maximize: bool = False) -> None:
    """:func:`radam` one tensor at a time, as the equations read."""
    ts = _increment(state_steps, foreach=False)
    if weight_decay and decoupled_weight_decay:
        _shrink(params, 1 - lr * weight_decay, foreach=False)
    coupled_decay = 0.0 if decoupled_weight_decay else weight_decay
    steps = [radam_step_size(t, lr=lr, beta1=beta1, beta2=beta2) for t in ts]
    for w, g, m, v, (step_size, rectified) in zip(params, grads, exp_avgs, exp_avg_sqs, steps):
        g = -g if maximize else g
        if coupled_decay:
            g = g.add(w, alpha=coupled_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        if rectified:
            w.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
        else:
            w.add_(m, alpha=-step_size)


def _foreach_radam(params: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor],
                   state_steps: list[Tensor], *, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.0, decoupled_weight_decay: bool = False, maximize: bool = False) -> None:
    """:func:`radam` with multi-tensor ``torch._foreach_*`` kernels: one launch per operation."""
    ts = _increment(state_steps, foreach=True)
    if weight_decay and decoupled_weight_decay:
        _shrink(params, 1 - lr * weight_decay, foreach=True)
    coupled_decay = 0.0 if decoupled_weight_decay else weight_decay
    steps = [radam_step_size(t, lr=lr, beta1=beta1, beta2=beta2) for t in ts]
    grads = _decayed_grads(params, grads, coupled_decay, maximize)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
    rect = [i for i, (_, rectified) in enumerate(steps) if rectified]
    if rect:
        denom = torch._foreach_sqrt([exp_avg_sqs[i] for i in rect])
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_([params[i] for i in rect], [exp_avgs[i] for i in rect], denom,
                                [-steps[i][0] for i in rect])
    if len(rect) < len(params):
        plain = [i for i, (_, rectified) in enumerate(steps) if not rectified]
        updates = torch._foreach_mul([exp_avgs[i] for i in plain], [-steps[i][0] for i in plain])
        torch._foreach_add_([params[i] for i in plain], updates)


def lookahead(slow_params: list[Tensor], params: list[Tensor], *, alpha: float) -> None:
    r"""Lookahead's synchronisation, every k inner steps (Zhang et al. 2019).

    .. math::
        \phi \leftarrow \phi + \alpha (\theta - \phi), \quad \theta \leftarrow \phi

    ``slow_params`` are the slow weights phi, ``params`` the fast weights theta reached by the inner optimizer.
    """
    torch._foreach_lerp_(slow_params, params, alpha)
    torch._foreach_copy_(params, slow_params)


def lbfgs_direction(grad: Tensor, old_dirs: list[Tensor], old_stps: list[Tensor], ro: list[Tensor],
                    h_diag: float | Tensor) -> Tensor:
    r"""L-BFGS search direction d = -H g by the two-loop recursion (Nocedal & Wright, Algorithm 7.4).

    With the last m curvature pairs s_i = w_{i+1} - w_i (``old_stps``), y_i = g_{i+1} - g_i (``old_dirs``),
    rho_i = 1 / (y_i^T s_i) (``ro``) and the initial Hessian approximation H_0 = gamma I, gamma = ``h_diag``:

    .. math::
        q = -g; \quad \text{for } i = m-1 \dots 0: \; a_i = \rho_i s_i^T q, \; q \leftarrow q - a_i y_i \\
        r = \gamma q; \quad \text{for } i = 0 \dots m-1: \; b = \rho_i y_i^T r, \; r \leftarrow r + (a_i - b) s_i
    """
    q = grad.neg()
    a = [None] * len(old_dirs)
    for i in reversed(range(len(old_dirs))):
        a[i] = old_stps[i].dot(q) * ro[i]
        q.add_(old_dirs[i], alpha=-a[i])
    r = q.mul_(h_diag)
    for i in range(len(old_dirs)):
        b = old_dirs[i].dot(r) * ro[i]
        r.add_(old_stps[i], alpha=a[i] - b)
    return r
