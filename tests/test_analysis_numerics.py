"""Floating-point numerics: the formats' limits, naive against stable formulas, and the loss-scaling measurement
(on a model whose gradients are known to sit below fp16's range, and on the MNIST MLP)."""
import math

import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir

from analysis.numerics import (format_table, gradients, log1p_errors, numerics_report, relative_spacing,
                               softmax_errors, tables, underflow_curve, variance_errors)
from conftest import CONFIG_DIR, DATA_ROOT
from utils.errors import ConfigError


def numerics_cfg(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("numerics", overrides=[f"data.root={DATA_ROOT}", *overrides])


def test_format_limits_are_the_ieee_and_bfloat16_values_and_representable():
    table = format_table()
    assert table["fp16"]["smallest_subnormal"] == 2.0**-24 and table["fp16"]["max"] == 65504.0
    assert (table["fp16"]["exponent_bits"], table["fp16"]["mantissa_bits"]) == (5, 10)
    assert (table["bf16"]["exponent_bits"], table["bf16"]["mantissa_bits"]) == (8, 7)
    assert (table["fp32"]["exponent_bits"], table["fp32"]["mantissa_bits"]) == (8, 23)
    assert table["bf16"]["smallest_normal"] == table["fp32"]["smallest_normal"]  # same exponent range
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        sub = table[name]["smallest_subnormal"]
        assert float(torch.tensor(sub, dtype=torch.float64).to(dtype)) == sub
        assert float(torch.tensor(0.49 * sub, dtype=torch.float64).to(dtype)) == 0.0
        assert math.isinf(float(torch.tensor(table[name]["max"] * 1.01, dtype=torch.float64).to(dtype)))


def test_relative_spacing_is_eps_at_one_and_grows_among_subnormals():
    x, spacing = relative_spacing(torch.float16)
    octave = spacing[(x >= 1) & (x < 2)]  # spacing 2^-10 throughout [1, 2): relative 2^-10 down to 2^-11
    assert len(octave) > 5 and 2.0**-11 < octave.min() <= octave.max() <= 2.0**-10
    assert spacing[x < 2.0**-21].min() > 0.1  # deep subnormals (below 8 * 2^-24): three bits or fewer left


def test_naive_log_sum_exp_overflows_where_the_stable_form_stays_accurate():
    scales = [1.0, 100.0, 10000.0]
    errors = softmax_errors(scales, 64, 10, torch.Generator().manual_seed(0))
    for name in ("fp32", "fp16", "bf16"):
        assert math.isinf(errors[name]["lse naive"][1]) and math.isinf(errors[name]["ce naive"][2])
        assert all(e < 2e-2 for e in errors[name]["lse stable"]) and all(e < 5e-2 for e in errors[name]["ce stable"])
    assert max(errors["fp32"]["lse stable"]) < 1e-6 and max(errors["fp32"]["ce stable"]) < 1e-5
    assert errors["fp32"]["lse naive"][0] < 1e-6  # at small logits both forms are fine


def test_naive_variance_cancels_catastrophically_and_log_1_plus_x_loses_small_x():
    variance = variance_errors([1.0, 1e4], 10_000, torch.Generator().manual_seed(0))
    assert variance["naive"][0] < 1e-5 and variance["naive"][1] >= 0.5  # E[x^2] ~ 1e8: eps * 1e8 >> var = 1
    assert max(variance["two-pass"]) < 1e-5
    log1p = log1p_errors([1e-8, 1e-2])
    assert log1p["fp32"]["log(1+x)"][0] == 1.0 and log1p["fp32"]["log1p"][0] < 1e-6  # 1 + 1e-8 rounds to 1
    assert math.isnan(log1p["fp16"]["log1p"][0])  # 1e-8 is below fp16's smallest subnormal: no input


class Tiny(nn.Module):
    """logits = 1e-9 * (W x + b): the weights' gradients are ~1e-10, below fp16's smallest subnormal (6e-8)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, x):
        return self.linear(x) * 1e-9


def test_underflow_curve_counts_gradients_lost_in_fp16_and_recovered_by_scaling():
    torch.manual_seed(0)
    model = Tiny()
    batches = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    reference = gradients(model, batches, None, 1.0, torch.device("cpu"))
    assert reference.abs().max() < 1e-8 and (reference != 0).all()
    curve = underflow_curve(model, batches, [0, 14, 40], torch.device("cpu"))
    assert curve["fp16"]["underflow"][0] == 1.0  # every entry flushed to zero at S = 1
    assert curve["fp16"]["underflow"][1] == 0.0 and curve["fp16"]["overflow"][1] == 0.0  # S = 2^14 keeps them
    assert curve["fp16"]["overflow"][2] == 1.0  # S = 2^40: dL/dlogits ~ S / 8 is past fp16's max 65504
    assert curve["bf16"]["underflow"] == [0.0, 0.0, 0.0]  # bf16 has fp32's exponent range


@pytest.mark.needs_data
def test_the_tool_on_the_mnist_mlp(tmp_path):
    cfg = numerics_cfg("train_steps=20", "batches=1", "scale_exponents=[0,16,40]", "data.train_subset=1024",
                       "logit_scales=[1,100]", "variance_offsets=[1,1000]", "log1p_x=[1e-8,0.1]")
    out, numbers = numerics_report(cfg, tmp_path)
    ls = numbers["loss_scaling"]
    assert len(ls["scaler_history"]) == 20 and math.log2(ls["scaler_scale"]).is_integer()
    assert ls["scaler_scale"] > 2.0**16  # growth every 10 clean steps: it climbed from its initial 2^16
    assert ls["fp16"]["underflow"][0] > 10 * ls["fp16"]["underflow"][1]  # S = 1 loses entries, 2^16 keeps them
    assert ls["fp16"]["overflow"][2] > 0.5 and ls["bf16"]["overflow"][2] == 0.0
    for name in ("numerics_lse", "numerics_cancellation", "numerics_formats", "numerics_underflow"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert "dynamic scaler settled at S =" in tables(numbers)


def test_bad_values_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"scale_exponents=\[\] is invalid: allowed a non-empty list of integers"):
        numerics_report(numerics_cfg("scale_exponents=[]"), tmp_path)
