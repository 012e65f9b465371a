"""Floating point in training, measured: ``python -m analysis.numerics``.

(a) log-sum-exp and softmax cross-entropy, naive against stable, in fp32, fp16 and bf16, for logits z = s * N(0, 1)
    over scales s. Naive: LSE = log sum exp z, CE = -log(exp z_y / sum exp z). Stable: with m = max z,
    LSE = m + log sum exp(z - m), CE = LSE - z_y (what F.cross_entropy does through log_softmax). Error: the
    relative error of the batch mean (the loss training sees; each row computed in the dtype, the mean in float64)
    against float64 on the same, already rounded, inputs, so only the computation is judged; a non-finite row
    makes it inf/nan. Each op runs in the given dtype (torch's CPU kernels round
    every result to it; their reductions accumulate in float32 internally).
(b) Two more cancellations: the variance of x = c + N(0, 1) as E[x^2] - E[x]^2 against the two-pass E[(x - mean)^2],
    over offsets c (fp32); and log(1 + x) against log1p(x) for small x (fp32, fp16, bf16).
(c) Range and resolution of fp32, fp16, bf16 (torch.finfo; the smallest subnormal is tiny * eps), and the relative
    spacing of representable numbers (nextafter(x) - x) / x across the whole range.
(d) Loss scaling on a real model: the MLP on MNIST (or ``checkpoint=``) is trained ``train_steps`` steps under fp16
    autocast with the project's dynamic scaler (training.precision), then, on ``batches`` fixed batches, its
    gradients under fp16 autocast with the loss scaled by S = 2^k are compared with the float32 gradients: the
    fraction of entries that are non-zero in float32 but zero in fp16 (underflow) and of non-finite entries
    (overflow), against S, with the scale the dynamic scaler settled on marked.
Writes ``numerics_lse.png``, ``numerics_cancellation.png``, ``numerics_formats.png``, ``numerics_underflow.png``,
``numerics.json``, TensorBoard images, and prints every table.
"""
import itertools
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig

import optimizers
from analysis.figures import FigureWriter, plt
from analysis.loading import fixed_batches, model_for, with_checkpoint_data
from cli.entry import command, run
from training.precision import Precision
from utils.device import resolve_device
from utils.errors import require
from utils.io import save_json

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OVERFLOW = 1e3  # where inf/nan errors are drawn


# (a) log-sum-exp and cross-entropy
def lse_naive(z):
    return torch.log(torch.exp(z).sum(-1))


def lse_stable(z):
    m = z.max(-1, keepdim=True).values
    return m.squeeze(-1) + torch.log(torch.exp(z - m).sum(-1))


def ce_naive(z, y):
    e = torch.exp(z)
    return -torch.log(e.gather(-1, y[:, None]).squeeze(-1) / e.sum(-1))


def ce_stable(z, y):
    return lse_stable(z) - z.gather(-1, y[:, None]).squeeze(-1)


def relative_error(approx: torch.Tensor, reference: torch.Tensor) -> float:
    """|mean(approx) - mean(ref)| / |mean(ref)|, the means in float64; inf when any entry is inf or nan."""
    approx = approx.double()
    if not torch.isfinite(approx).all():
        return math.inf
    return float((approx.mean() - reference.mean()).abs() / reference.mean().abs().clamp_min(1e-300))


FORMULAS = {"lse naive": lambda z, y: lse_naive(z), "lse stable": lambda z, y: lse_stable(z),
            "ce naive": ce_naive, "ce stable": ce_stable}


def softmax_errors(scales: list[float], batch: int, classes: int, generator: torch.Generator) -> dict:
    """{dtype: {"lse naive": [error per scale], "lse stable": ..., "ce naive": ..., "ce stable": ...}}."""
    z64 = torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    y = torch.randint(0, classes, (batch,), generator=generator)
    errors = {name: {key: [] for key in FORMULAS} for name in DTYPES}
    for name, dtype in DTYPES.items():
        for s in scales:
            z = (s * z64).to(dtype)
            exact = {"lse": lse_stable(z.double()), "ce": ce_stable(z.double(), y)}
            for key, formula in FORMULAS.items():
                errors[name][key].append(relative_error(formula(z, y), exact[key.split()[0]]))
    return errors


# (b) cancellation
def variance_errors(offsets: list[float], n: int, generator: torch.Generator) -> dict:
    """fp32 variance of c + N(0,1), naive E[x^2] - E[x]^2 and two-pass, relative to float64 on the same x."""
    noise = torch.randn(n, generator=generator, dtype=torch.float64)
    out = {"naive": [], "two-pass": []}
    for c in offsets:
        x = (c + noise).float()
        exact = x.double().var(correction=0)
        naive = (x * x).mean() - x.mean() ** 2
        two_pass = ((x - x.mean()) ** 2).mean()
        out["naive"].append(relative_error(naive, exact))
        out["two-pass"].append(relative_error(two_pass, exact))
    return out


def log1p_errors(xs: list[float]) -> dict:
    """{dtype: {"log(1+x)": [...], "log1p": [...]}} relative to float64 log1p of the same rounded x; nan where x
    itself rounds to 0 in the dtype (below its smallest subnormal)."""
    out = {}
    for name, dtype in DTYPES.items():
        x = torch.tensor(xs, dtype=dtype)
        exact = torch.log1p(x.double())
        out[name] = {key: [relative_error(v, e) if e != 0 else math.nan for v, e in zip(values, exact)]
                     for key, values in (("log(1+x)", torch.log(1 + x)), ("log1p", torch.log1p(x)))}
    return out


# (c) formats
def format_table() -> dict:
    """Per dtype: exponent and mantissa bits, eps (spacing at 1), smallest subnormal, smallest normal, max."""
    table = {}
    for name, dtype in DTYPES.items():
        info = torch.finfo(dtype)
        mantissa = -round(math.log2(info.eps))
        table[name] = {"bits": info.bits, "exponent_bits": info.bits - 1 - mantissa, "mantissa_bits": mantissa,
                       "eps": info.eps, "smallest_subnormal": info.tiny * info.eps, "smallest_normal": info.tiny,
                       "max": info.max, "decimal_digits": -math.log10(info.eps)}
    return table


def relative_spacing(dtype: torch.dtype, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(x, (nextafter(x, inf) - x) / x) for x log-spaced over the positive finite numbers of ``dtype``."""
    info = torch.finfo(dtype)
    x = torch.logspace(math.log10(info.tiny * info.eps), math.log10(info.max), points, dtype=torch.float64)
    x = x.to(dtype)
    x = x[(x > 0) & torch.isfinite(x) & (x < info.max)]
    gap = torch.nextafter(x, torch.full_like(x, math.inf)).double() - x.double()
    return x.double().numpy(), (gap / x.double()).numpy()


# (d) loss scaling on a real model
def briefly_train(model, cfg: DictConfig, data, precision: Precision, device) -> list[float]:
    """``train_steps`` steps of fp16 autocast training with the dynamic scaler; returns its scale after each."""
    optimizer = optimizers.build(cfg.optimizer, model)
    scales = []
    model.train()
    for x, y in itertools.islice(itertools.chain.from_iterable(itertools.repeat(data.train)), cfg.train_steps):
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
        precision.backward(loss)
        precision.step(optimizer)
        scales.append(precision.scale())
    return scales


def gradients(model, batches, dtype: torch.dtype | None, scale: float, device) -> torch.Tensor:
    """The flat gradient of the mean CE over ``batches`` for loss * scale, divided by scale (each batch's own
    backward under autocast to ``dtype``, or float32 for None), concatenated over batches."""
    flats = []
    for x, y in batches:
        model.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        (loss * scale).backward()
        flats.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]) / scale)
    return torch.cat(flats)


def underflow_curve(model, batches, exponents: list[int], device) -> dict:
    """For S = 2^k: fractions of gradient entries lost to underflow and non-finite, fp16 and bf16 autocast."""
    reference = gradients(model, batches, None, 1.0, device)
    nonzero = reference != 0
    curve = {"scale": [2.0**k for k in exponents], "reference_zero_fraction": float((~nonzero).float().mean())}
    for name in ("fp16", "bf16"):
        under, over = [], []
        for k in exponents:
            g = gradients(model, batches, DTYPES[name], 2.0**k, device)
            under.append(float(((g == 0) & nonzero).sum() / nonzero.sum()))
            over.append(float((~torch.isfinite(g)).float().mean()))
        curve[name] = {"underflow": under, "overflow": over}
    magnitudes = reference[nonzero].abs()
    curve["grad_quantiles"] = {q: float(magnitudes.quantile(q)) for q in (0.01, 0.1, 0.5, 0.9, 0.99)}
    return curve


def loss_scaling(cfg: DictConfig) -> dict:
    device = resolve_device(cfg.trainer.device)
    model = model_for(cfg)[0].to(device)
    precision = Precision("fp16", device, growth_interval=cfg.scaler_growth_interval)
    data = instantiate(cfg.data)
    scales = briefly_train(model, cfg, data, precision, device)
    batches = fixed_batches(data, cfg.batches * cfg.data.batch_size, cfg.data.batch_size, device)
    model.eval()
    curve = underflow_curve(model, batches, sorted(cfg.scale_exponents), device)
    curve["scaler_history"] = scales
    curve["scaler_scale"] = precision.scale()
    return curve


# figures
def _errors_for_plot(values: list[float]) -> np.ndarray:
    """Errors on a log axis: 0 drawn at 1e-10, inf at OVERFLOW, nan (no input) left out."""
    v = np.array(values, dtype=float)
    return np.where(np.isinf(v), OVERFLOW, np.maximum(v, 1e-10))


def plot_softmax(scales: list[float], errors: dict):
    fig, axes = plt.subplots(1, 2, figsize=(15, 5), sharey=True)
    for ax, what in zip(axes, ("lse", "ce")):
        for (name, per), color in zip(errors.items(), ("C0", "C1", "C2")):
            for method, style in (("naive", "--"), ("stable", "-")):
                ax.loglog(scales, _errors_for_plot(per[f"{what} {method}"]), style, marker="o", ms=3,
                          color=color, label=f"{name} {method}")
        ax.axhline(OVERFLOW, color="red", lw=0.6)
        ax.text(scales[0], OVERFLOW * 1.3, "inf / nan", color="red", fontsize=8)
        ax.set(xlabel="logit scale s (z = s * N(0, 1))", ylim=(1e-10, OVERFLOW * 5),
               title="log-sum-exp" if what == "lse" else "softmax cross-entropy")
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("relative error of the batch mean vs float64")
    axes[1].legend(fontsize=8, loc="center right")
    return fig


def plot_cancellation(offsets: list[float], variance: dict, xs: list[float], log1p: dict):
    fig, axes = plt.subplots(1, 2, figsize=(15, 5))
    for method, style in (("naive", "--"), ("two-pass", "-")):
        axes[0].loglog(offsets, _errors_for_plot(variance[method]), style, marker="o", ms=3,
                       label="E[x^2] - E[x]^2" if method == "naive" else "E[(x - mean)^2]")
    axes[0].set(xlabel="offset c (x = c + N(0, 1), fp32)", ylabel="relative error of the variance",
                title="variance: naive vs two-pass")
    for (name, per), color in zip(log1p.items(), ("C0", "C1", "C2")):
        axes[1].loglog(xs, _errors_for_plot(per["log(1+x)"]), "--", color=color, label=f"{name} log(1 + x)")
        axes[1].loglog(xs, _errors_for_plot(per["log1p"]), "-", color=color, label=f"{name} log1p(x)")
    axes[1].set(xlabel="x", ylabel="relative error", title="log(1 + x) vs log1p(x)")
    for ax in axes:
        ax.set_ylim(1e-10, OVERFLOW * 5)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return fig


def plot_formats(table: dict):
    fig, ax = plt.subplots(figsize=(10, 5))
    for (name, dtype), color in zip(DTYPES.items(), ("C0", "C1", "C2")):
        x, spacing = relative_spacing(dtype)
        ax.loglog(x, spacing, color=color, label=f"{name}: eps {table[name]['eps']:.2g}, max {table[name]['max']:.3g}")
        ax.axvline(table[name]["smallest_normal"], color=color, ls=":", lw=0.8)
    ax.set(xlabel="x", ylabel="relative spacing (nextafter(x) - x) / x",
           title="resolution across the range (dotted: smallest normal; subnormals below lose precision)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return fig


def plot_underflow(curve: dict):
    fig, ax = plt.subplots(figsize=(9, 5))
    floor = 1e-7  # zero, on the log axis
    for name, color in (("fp16", "C1"), ("bf16", "C2")):
        for key, style, what in (("underflow", "o-", "underflow to 0"), ("overflow", "s--", "inf / nan")):
            ax.plot(curve["scale"], np.maximum(curve[name][key], floor), style, ms=3, color=color,
                    label=f"{name}: {what}")
    ax.axvline(curve["scaler_scale"], color="black", ls=":", label=f"dynamic scaler's scale {curve['scaler_scale']:g}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="loss scale S", ylabel=f"fraction of gradient entries (0 drawn at {floor:g})",
           title="MLP gradients under autocast, loss x S (fraction of the entries non-zero in float32)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def numerics_report(cfg: DictConfig, out_dir: str | Path) -> tuple[FigureWriter, dict]:
    require(cfg.train_steps >= 0, "train_steps", cfg.train_steps, "an integer >= 0")
    require(cfg.batches >= 1, "batches", cfg.batches, "an integer >= 1")
    require(len(cfg.scale_exponents) >= 1 and all(isinstance(k, int) for k in cfg.scale_exponents),
            "scale_exponents", list(cfg.scale_exponents), "a non-empty list of integers k (loss scales S = 2^k)")
    generator = torch.Generator().manual_seed(cfg.seed)
    numbers = {"formats": format_table(),
               "softmax": {"scales": list(cfg.logit_scales),
                           "errors": softmax_errors(list(cfg.logit_scales), cfg.logit_batch, cfg.classes, generator)},
               "variance": {"offsets": list(cfg.variance_offsets),
                            "errors": variance_errors(list(cfg.variance_offsets), cfg.variance_samples, generator)},
               "log1p": {"x": list(cfg.log1p_x), "errors": log1p_errors(list(cfg.log1p_x))},
               "loss_scaling": loss_scaling(cfg)}
    out = FigureWriter(out_dir, tensorboard=True)
    out.save(plot_softmax(numbers["softmax"]["scales"], numbers["softmax"]["errors"]), "numerics_lse")
    out.save(plot_cancellation(numbers["variance"]["offsets"], numbers["variance"]["errors"], numbers["log1p"]["x"],
                               numbers["log1p"]["errors"]), "numerics_cancellation")
    out.save(plot_formats(numbers["formats"]), "numerics_formats")
    out.save(plot_underflow(numbers["loss_scaling"]), "numerics_underflow")
    save_json(numbers, out.out_dir / "numerics.json")
    out.add(out.out_dir / "numerics.json")
    return out, numbers


# tables
def _cell(value: float) -> str:
    return f"{value:9.1e}" if math.isfinite(value) else f"{'inf/nan' if math.isinf(value) else 'x->0':>9}"


def tables(numbers: dict) -> str:
    lines = ["(c) formats", f"{'':6}{'bits':>5}{'exp':>5}{'mant':>5}{'eps':>11}{'min subnormal':>15}"
             f"{'min normal':>12}{'max':>12}{'digits':>8}"]
    for name, row in numbers["formats"].items():
        lines.append(f"{name:6}{row['bits']:5d}{row['exponent_bits']:5d}{row['mantissa_bits']:5d}{row['eps']:11.3e}"
                     f"{row['smallest_subnormal']:15.3e}{row['smallest_normal']:12.3e}{row['max']:12.4e}"
                     f"{row['decimal_digits']:8.2f}")
    soft = numbers["softmax"]
    lines += ["", "(a) relative error of the batch-mean LSE / CE vs float64, logits z = s * N(0,1)",
              f"{'s =':18}" + "".join(f"{s:>9g}" for s in soft["scales"])]
    for name, per in soft["errors"].items():
        for key, values in per.items():
            lines.append(f"{name + ' ' + key:18}" + "".join(_cell(v) for v in values))
    var = numbers["variance"]
    lines += ["", "(b) fp32 variance of c + N(0,1), relative error", f"{'c =':18}" +
              "".join(f"{c:>9g}" for c in var["offsets"])]
    lines += [f"{'variance ' + k:18}" + "".join(_cell(v) for v in values) for k, values in var["errors"].items()]
    lp = numbers["log1p"]
    lines += ["", "(b) log(1+x) vs log1p(x), relative error (x->0: x rounds to zero)",
              f"{'x =':18}" + "".join(f"{x:>9g}" for x in lp["x"])]
    for name, per in lp["errors"].items():
        lines += [f"{name + ' ' + k:18}" + "".join(_cell(v) for v in values) for k, values in per.items()]
    ls = numbers["loss_scaling"]
    q = ls["grad_quantiles"]
    lines += ["", f"(d) MLP gradients: |g| quantiles 1% {q[0.01]:.2e}, 50% {q[0.5]:.2e}, 99% {q[0.99]:.2e}; "
              f"dynamic scaler settled at S = {ls['scaler_scale']:g}",
              f"{'S':>12}{'fp16 underflow':>16}{'fp16 inf/nan':>14}{'bf16 underflow':>16}"]
    for i, s in enumerate(ls["scale"]):
        lines.append(f"{s:12g}{ls['fp16']['underflow'][i]:16.4%}{ls['fp16']['overflow'][i]:14.4%}"
                     f"{ls['bf16']['underflow'][i]:16.4%}")
    return "\n".join(lines)


@command("numerics", validate_config=False)
def main(cfg: DictConfig) -> None:
    cfg = with_checkpoint_data(cfg, HydraConfig.get().overrides.task)
    out, numbers = numerics_report(cfg, HydraConfig.get().runtime.output_dir)
    print(tables(numbers))
    print(out.report())


if __name__ == "__main__":
    run(main)
