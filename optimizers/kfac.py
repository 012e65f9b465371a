r"""K-FAC: Kronecker-factored approximate curvature (Martens & Grosse 2015; KFC for convolutions, Grosse & Martens 2016).

For a layer s = W a (bias folded in as a last column of W, a constant 1 appended to a), the Fisher block of vec(W)
is approximated by a Kronecker product of two small matrices,

    F_W ~ A (x) G,   A = E[a a^T] (layer inputs),   G = E[g g^T],   g = d(-log p(y|x)) / ds,  y ~ p(y|x)

so (A (x) G + damping)^-1 vec(V) costs two eigendecompositions instead of inverting F. With A = Q_A diag(d_A) Q_A^T
and G = Q_G diag(d_G) Q_G^T the preconditioned gradient of a layer with gradient matrix V is

    U = Q_G [ (Q_G^T V Q_A) / (d_G d_A^T + damping) ] Q_A^T.

A Conv2d layer is a Linear layer applied at every output location t (KFC): a is the unfolded input patch at t
(F.unfold), g the output gradient at t, and the expectations run over examples and locations ("expand" in
Eschenhagen et al. 2023). Normalisation (curvlinops' convention, which the tests compare against):
A = mean over (example, location) of a a^T; G = (1/N) sum over examples and locations of g g^T.

g uses labels sampled from the model's own predictive distribution (``fisher="mc"``, one backward pass), or the
exact expectation over labels (``fisher="exact"``: C backward passes of the columns of the softmax Hessian's square
root, diag(sqrt p) - p sqrt(p)^T; the GGN of the cross-entropy, for small problems and tests). Either way no label
is needed: the optimizer hooks the model's forward pass and backpropagates from the logits itself, with
``retain_graph`` so the training step's own backward still works. The factors are exponential moving averages
refreshed every ``factor_update_interval`` steps, their eigendecompositions every ``inverse_update_interval``.

The step follows the common implementations (Martens & Grosse sec. 6-7; alecwangcq/KFAC-Pytorch): precondition the
Linear/Conv2d gradients, rescale them all by the KL clip nu = min(1, sqrt(kl_clip / (lr^2 sum_l <U_l, V_l>)))
(a trust region on the predicted change of the model's distribution), then one SGD-momentum step
(:func:`optimizers.functional.sgd`) on every parameter: the preconditioned directions for the factored layers,
the raw gradients for the rest (normalisation gains, biases of layers without a factor).
"""

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as TF
from torch import Tensor

from optimizers import functional as F
from optimizers.base import require
from optimizers.hooks import WeakHook


def factored_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear and ungrouped, zero-padded Conv2d layers of ``model`` with a trainable weight."""
    def factored(m: nn.Module) -> bool:
        if isinstance(m, nn.Conv2d):
            return m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str)
        return isinstance(m, nn.Linear)
    return [m for m in model.modules() if factored(m) and m.weight.requires_grad]


def layer_inputs(layer: nn.Module, x: Tensor) -> Tensor:
    """a: the layer's inputs as rows, one per (example, output location), a 1 appended when it has a bias.
    Linear: (B, in) -> (B, in [+1]); Conv2d: (B, C, H, W) -> (B*T, C*kh*kw [+1]), T output locations."""
    if isinstance(layer, nn.Conv2d):
        x = TF.unfold(x, layer.kernel_size, layer.dilation, layer.padding, layer.stride)  # (B, C*kh*kw, T)
        x = x.transpose(1, 2).flatten(0, 1)
    else:
        x = x.flatten(0, -2)
    x = _at_least_float32(x)
    return torch.cat([x, x.new_ones(len(x), 1)], 1) if layer.bias is not None else x


def output_grads(layer: nn.Module, g: Tensor) -> Tensor:
    """g as rows, one per (example, output location): (B, out) or (B, out, H, W) -> (B*T, out)."""
    return _at_least_float32((g.flatten(2).transpose(1, 2) if isinstance(layer, nn.Conv2d) else g).reshape(-1, g.shape[1]))


def _at_least_float32(t: Tensor) -> Tensor:
    """Factors accumulate in float32 (float64 stays float64) whatever the autocast dtype of the forward pass."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def weight_matrix(layer: nn.Module, weight: Tensor, bias: Tensor | None) -> Tensor:
    """[W | b] as one (out, in [+1]) matrix, matching the columns of :func:`layer_inputs`."""
    w = weight.reshape(len(weight), -1)
    return torch.cat([w, bias[:, None]], 1) if bias is not None else w


def label_directions(logits: Tensor, fisher: str, generator: torch.Generator | None = None) -> list[Tensor]:
    r"""The vectors v (each (B, C)) whose backpropagation J^T v gives the output gradients g of the Fisher,
    E_y[J^T (p - e_y)(p - e_y)^T J] = sum_v J^T v v^T J:
    ``mc``: one v = p - e_y with y ~ Categorical(p) (the gradient of -log p(y|x) with respect to the logits);
    ``exact``: the C columns of the square root S = diag(sqrt p) - p sqrt(p)^T of diag(p) - p p^T."""
    p = _at_least_float32(logits.detach()).softmax(1)  # (B, C)
    if fisher == "mc":
        y = torch.multinomial(p, 1, generator=generator).squeeze(1)
        return [p - TF.one_hot(y, p.shape[1]).to(p)]
    root, eye = p.sqrt(), torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
    return [root[:, c, None] * (eye[c] - p) for c in range(p.shape[1])]  # column c: sqrt(p_c) (e_c - p)


class KFAC(torch.optim.Optimizer):
    r"""K-FAC for the Linear and Conv2d layers of ``model``, SGD with momentum for every other parameter.

    .. math::
        A \leftarrow \epsilon A + (1 - \epsilon) \hat A, \quad G \leftarrow \epsilon G + (1 - \epsilon) \hat G
        \quad \text{(every factor\_update\_interval steps)} \\
        U_l = (A_l \otimes G_l + \gamma I)^{-1} V_l \text{ (eigenbases of } A_l, G_l \text{, refreshed every
        inverse\_update\_interval steps)} \\
        \nu = \min(1, \sqrt{\kappa / (\eta^2 \textstyle\sum_l \langle U_l, V_l \rangle)}), \quad
        \text{then SGD-momentum on } \nu U_l \text{ (factored layers) and } g \text{ (the rest)}

    Args:
        params: parameters or param-group dicts (groups may set their own lr/momentum/weight_decay).
        model: the network whose Linear/Conv2d layers get factors; its forward pass is hooked. Its output must be
            the logits of a categorical distribution (a classifier).
        lr: step size eta.
        momentum: velocity decay of the SGD step (0 disables it).
        weight_decay: L2 penalty lambda added after preconditioning.
        damping: gamma, added to the eigenvalue products d_G d_A^T (Tikhonov damping of the Kronecker product).
        stat_decay: epsilon, the decay of the running factors.
        kl_clip: kappa, the trust-region bound on the predicted KL change (null: no clipping).
        factor_update_interval: refresh the factors on every N-th step's forward pass.
        inverse_update_interval: refresh the eigendecompositions every N-th step.
        fisher: ``mc`` (one sampled label per example) or ``exact`` (every label, C backward passes).

    State per factored weight: ``step``, ``A``, ``G``, ``QA``, ``dA``, ``QG``, ``dG``; per parameter
    ``momentum_buffer``.
    """

    needs_model = True  # optimizers.build passes the model: K-FAC hooks its forward pass

    def __init__(self, params, model: nn.Module, lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 0.0, damping: float = 1e-3, stat_decay: float = 0.95,
                 kl_clip: float | None = 1e-3, factor_update_interval: int = 10, inverse_update_interval: int = 100,
                 fisher: str = "mc") -> None:
        require(lr >= 0.0, "learning rate", lr, ">= 0")
        require(momentum >= 0.0, "momentum value", momentum, ">= 0")
        require(weight_decay >= 0.0, "weight_decay value", weight_decay, ">= 0")
        require(damping > 0.0, "damping", damping, "> 0")
        require(0.0 <= stat_decay < 1.0, "stat_decay", stat_decay, "in [0, 1)")
        require(kl_clip is None or kl_clip > 0.0, "kl_clip", kl_clip, "> 0 or None")
        require(factor_update_interval >= 1, "factor_update_interval", factor_update_interval, ">= 1")
        require(inverse_update_interval >= 1, "inverse_update_interval", inverse_update_interval, ">= 1")
        require(fisher in ("mc", "exact"), "fisher", fisher, "'mc' or 'exact'")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, damping=damping,
                        stat_decay=stat_decay, kl_clip=kl_clip, factor_update_interval=factor_update_interval,
                        inverse_update_interval=inverse_update_interval, fisher=fisher)
        super().__init__(params, defaults)
        owned = {p for group in self.param_groups for p in group["params"]}
        self.layers = [m for m in factored_layers(model) if m.weight in owned]
        require(bool(self.layers), "model", type(model).__name__, "a network with Linear or Conv2d layers")
        self._owned = {id(m) for m in (model, *self.layers)}
        self._captured: dict[nn.Module, tuple[Tensor, list[Tensor]]] = {}
        self._backpropagating = False  # True while our own backward runs: the output hooks record only then
        for layer in self.layers:
            layer.register_forward_hook(WeakHook(self, "_capture_layer"))
        model.register_forward_hook(WeakHook(self, "_update_factors_from_logits"))

    # ----------------------------------------------------------------------------------- hooks
    def _step_count(self) -> int:
        return int(self.state[self.layers[0].weight].get("step", 0))

    def _factors_due(self) -> bool:
        return (torch.is_grad_enabled() and self.layers[0].training
                and self._step_count() % self.defaults["factor_update_interval"] == 0)

    def _capture_layer(self, layer: nn.Module, inputs: tuple[Tensor], output: Tensor) -> None:
        """On a factor-update forward: keep the layer's input, and collect its output gradient during our backward."""
        if not self._factors_due():
            return
        grads: list[Tensor] = []
        self._captured[layer] = (inputs[0].detach(), grads)

        def record(g: Tensor) -> None:
            if self._backpropagating:
                grads.append(g.detach())
        output.register_hook(record)

    def _update_factors_from_logits(self, model: nn.Module, inputs, logits: Tensor) -> None:
        """Backpropagate the Fisher's label directions from the logits, then fold the batch's factors in."""
        if not self._captured:
            return
        captured, self._captured = self._captured, {}
        directions = label_directions(logits, self.defaults["fisher"])
        self._backpropagating = True
        try:
            for v in directions:
                torch.autograd.grad(logits, [layer.weight for layer in captured], v.to(logits.dtype),
                                    retain_graph=True, allow_unused=True)
        finally:
            self._backpropagating = False
        with torch.autocast(logits.device.type, enabled=False):  # the hook runs inside the step's autocast
            for layer, (x, grads) in captured.items():
                a = layer_inputs(layer, x)
                g = [output_grads(layer, gi) for gi in grads]
                self._fold(layer, a.T @ a / len(a), sum(gi.T @ gi for gi in g) / len(x))

    @torch.no_grad()
    def _fold(self, layer: nn.Module, a_batch: Tensor, g_batch: Tensor) -> None:
        """Running factors A, G <- eps * old + (1 - eps) * batch (the first batch sets them)."""
        state, eps = self.state[layer.weight], self.defaults["stat_decay"]
        if "A" not in state:
            state.update(A=a_batch, G=g_batch)
        else:
            state["A"].mul_(eps).add_(a_batch, alpha=1 - eps)
            state["G"].mul_(eps).add_(g_batch, alpha=1 - eps)

    # ------------------------------------------------------------------------------------ step
    def _refresh_inverses(self) -> None:
        for layer in self.layers:
            state = self.state[layer.weight]
            if "A" in state:
                state["dA"], state["QA"] = torch.linalg.eigh(state["A"])
                state["dG"], state["QG"] = torch.linalg.eigh(state["G"])
                state["dA"].clamp_(min=0)
                state["dG"].clamp_(min=0)

    def _preconditioned(self, damping: float) -> dict[Tensor, Tensor]:
        """U for every factored weight (and bias) that has a gradient and an eigenbasis; keyed by parameter."""
        directions = {}
        for layer in self.layers:
            state, bias = self.state[layer.weight], layer.bias
            if layer.weight.grad is None or "QA" not in state:
                continue
            has_bias = bias is not None
            bias_grad = None if not has_bias else bias.grad if bias.grad is not None else torch.zeros_like(bias)
            v = _at_least_float32(weight_matrix(layer, layer.weight.grad, bias_grad))
            qa, qg = state["QA"], state["QG"]
            u = qg @ ((qg.T @ v @ qa) / (state["dG"][:, None] * state["dA"][None, :] + damping)) @ qa.T
            if has_bias:
                directions[bias] = u[:, -1].to(bias.dtype)
                u = u[:, :-1]
            directions[layer.weight] = u.reshape_as(layer.weight).to(layer.weight.dtype)
        return directions

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Precondition the factored layers' gradients, clip by KL, take an SGD-momentum step on everything."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        step = self._step_count()
        if step % self.defaults["inverse_update_interval"] == 0 or "QA" not in self.state[self.layers[0].weight]:
            self._refresh_inverses()
        group0 = self.param_groups[0]
        directions = self._preconditioned(group0["damping"])
        if group0["kl_clip"] is not None and directions:
            vu = sum((_at_least_float32(u) * p.grad).sum() for p, u in directions.items()) * group0["lr"] ** 2
            nu = torch.clamp(torch.sqrt(group0["kl_clip"] / vu.clamp(min=1e-30)), max=1.0)
            directions = {p: u * nu.to(u.dtype) for p, u in directions.items()}
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            buffers = [self.state[p].get("momentum_buffer") for p in params]
            F.sgd(params, [directions.get(p, p.grad) for p in params], buffers, lr=group["lr"],
                  momentum=group["momentum"], weight_decay=group["weight_decay"])
            if group["momentum"]:
                for p, buffer in zip(params, buffers):
                    self.state[p]["momentum_buffer"] = buffer
        for layer in self.layers:
            self.state[layer.weight]["step"] = step + 1
        return loss
