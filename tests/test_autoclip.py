"""AutoClip: the threshold is the percentile of the recorded gradient norms, the gradients are clipped to it, and
its history survives a state-dict round trip."""
import math

import numpy as np
import pytest
import torch

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cli.compose import build_trainer
from training import checkpoint
from training.autoclip import AutoClip
from training.clipping import clip_gradients
from training.options import TrainerOptions
from utils.errors import ConfigError

NORMS = [3.0, 1.0, 4.0, 1.5, 5.0, 9.0, 2.0, 6.0, 5.5, 3.5]


def parameter_with_grad_norm(norm: float, seed: int) -> torch.nn.Parameter:
    """A parameter whose gradient is a random direction of exactly this L2 norm."""
    p = torch.nn.Parameter(torch.zeros(7))
    direction = torch.randn(7, generator=torch.Generator().manual_seed(seed))
    p.grad = direction / direction.norm() * norm
    return p


@pytest.mark.parametrize("percentile,window", [(10, None), (25, None), (50, 4), (90, 3), (100, None)])
def test_threshold_is_the_percentile_of_the_history_and_gradients_are_clipped_to_it(percentile, window):
    clip = AutoClip(percentile, window)
    for t, norm in enumerate(NORMS):
        p = parameter_with_grad_norm(norm, t)
        direction = p.grad / p.grad.norm()
        result = clip([p])
        seen = NORMS[:t + 1] if window is None else NORMS[max(0, t + 1 - window):t + 1]
        expected = np.percentile(seen, percentile)  # numpy's linear interpolation
        assert float(clip.threshold) == pytest.approx(expected, rel=1e-6)
        assert float(result.total_norm) == pytest.approx(norm, rel=1e-6)
        assert float(p.grad.norm()) == pytest.approx(min(norm, expected), rel=1e-5)
        assert torch.allclose(p.grad / p.grad.norm(), direction, atol=1e-6)  # scaled, never turned
        assert bool(result.clipped) == (expected < norm - 1e-5)


def test_non_finite_norms_stay_out_of_the_percentile():
    clip = AutoClip(50)
    for t, norm in enumerate([2.0, math.inf, 4.0]):
        clip([parameter_with_grad_norm(norm, t)]) if math.isfinite(norm) else clip([_inf_grad()])
    assert float(clip.threshold) == pytest.approx(3.0)  # the median of (2, 4)


def _inf_grad() -> torch.nn.Parameter:
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, math.inf, 0.0])
    return p


def test_a_resumed_history_gives_the_uninterrupted_thresholds():
    whole, first = AutoClip(30, window=6), AutoClip(30, window=6)
    thresholds = []
    for t, norm in enumerate(NORMS):
        whole([parameter_with_grad_norm(norm, t)])
        thresholds.append(float(whole.threshold))
    for t, norm in enumerate(NORMS[:5]):
        first([parameter_with_grad_norm(norm, t)])
    resumed = AutoClip(30, window=6)
    resumed.load_state_dict(first.state_dict())
    for t, norm in enumerate(NORMS[5:], start=5):
        resumed([parameter_with_grad_norm(norm, t)])
        assert float(resumed.threshold) == thresholds[t]
    assert torch.equal(resumed.state_dict()["history"], whole.state_dict()["history"])


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"trainer.clip.percentile=101 is invalid: allowed a number in \[0, 100\]"):
        TrainerOptions(clip_mode="autoclip", clip_percentile=101)
    with pytest.raises(ConfigError, match=r"trainer.clip.window=0 is invalid: allowed an integer >= 1 or null"):
        TrainerOptions(clip_mode="autoclip", clip_window=0)
    with pytest.raises(ValueError, match=r"clip mode='autoclip' is invalid: .*none.*norm.*value.*agc"):
        clip_gradients([parameter_with_grad_norm(1.0, 0)], "autoclip", 1.0)  # stateless: it has no history


@pytest.mark.needs_data
def test_a_run_logs_the_percentile_of_its_own_gradient_norms_as_clip_threshold(cfg, tmp_path):
    trainer = build_trainer(cfg("trainer.epochs=2", "data.train_subset=160", "data.batch_size=32",
                                "model.hidden_sizes=[16]", "optimizer=momentum", "trainer.clip.mode=autoclip",
                                "trainer.clip.percentile=20", "trainer.clip.window=6", "logger.log_every_n_steps=1"),
                            tmp_path)
    trainer.fit()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    norms = [s.value for s in events.Scalars("watch/grad_norm")]
    thresholds = [s.value for s in events.Scalars("watch/clip_threshold")]
    fired = [s.value for s in events.Scalars("watch/clip_fired")]
    assert len(norms) == len(thresholds) == 10  # 5 steps per epoch, every one logged
    for t, threshold in enumerate(thresholds):
        assert threshold == pytest.approx(np.percentile(norms[max(0, t - 5):t + 1], 20), rel=1e-5)
        assert fired[t] == float(threshold < norms[t])
    assert sum(fired) >= 3  # clipping fires whenever a norm is above the 20th percentile of its window
    history = checkpoint.load(tmp_path / "checkpoints" / "last.pt")["autoclip"]["history"]
    assert history.tolist() == pytest.approx(norms, rel=1e-6)
