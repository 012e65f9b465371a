"""Loss landscapes: filter-normalised directions, the plane's centre, the interpolation's ends, the whole tool."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from analysis.landscape import filter_normalized_direction, interpolation, landscape, loss_plane, plot_contour
from analysis.loading import fixed_batches, initial_model, load_checkpoint_model, mean_loss
from conftest import CONFIG_DIR, DATA_ROOT, compose_cfg
from models import ResNet
from cli.compose import build_trainer, train
from utils.errors import ConfigError


def compose_tool(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, overrides=["trainer.device=cpu", f"data.root={DATA_ROOT}", *overrides])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An MLP with a non-default width, trained for 3 epochs on 512 MNIST images."""
    run_dir = tmp_path_factory.mktemp("run")
    train(compose_cfg("model.hidden_sizes=[32]", "trainer.epochs=3"), run_dir)
    return run_dir / "checkpoints" / "last.pt"


def test_filter_normalised_directions_match_filter_norms_and_skip_biases_and_bn():
    torch.manual_seed(0)
    model = ResNet(depth=8, width=4, in_channels=3, num_classes=10)  # conv, BatchNorm, linear
    direction = filter_normalized_direction(model, torch.Generator().manual_seed(1))
    checked = 0
    for (name, p), d in zip(model.named_parameters(), direction):
        assert d.shape == p.shape
        if p.dim() <= 1:  # biases and BatchNorm weights/biases
            assert torch.count_nonzero(d) == 0, name
        else:
            assert torch.allclose(d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5), name
            assert not torch.allclose(d, p.detach()), name  # random, not the weights themselves
            checked += 1
    assert checked >= 4  # convolutions and the classifier


@torch.no_grad()
def test_interpolation_ends_are_the_two_models_and_weights_are_restored():
    torch.manual_seed(0)
    model, other = nn.Linear(4, 3), nn.Linear(4, 3)
    batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = interpolation(model, other.state_dict(), model.state_dict(), [0.0, 0.5, 1.0], batches)
    assert losses[0] == pytest.approx(mean_loss(other, batches), rel=1e-6)
    assert losses[2] == pytest.approx(mean_loss(model, batches), rel=1e-6)
    assert losses[1] != pytest.approx(losses[0]) and losses[1] != pytest.approx(losses[2])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.needs_data
def test_plane_centre_is_the_models_loss_on_the_fixed_subset():
    cfg = compose_cfg()
    data = instantiate(cfg.data)
    batches = fixed_batches(data, 300, 128)
    assert [len(y) for _, y in batches] == [128, 128, 44]
    again = fixed_batches(data, 300, 128)
    assert all(torch.equal(x, x2) and torch.equal(y, y2) for (x, y), (x2, y2) in zip(batches, again))
    model = initial_model(cfg.model, 0)
    before = [p.detach().clone() for p in model.parameters()]
    generator = torch.Generator().manual_seed(0)
    d1, d2 = filter_normalized_direction(model, generator), filter_normalized_direction(model, generator)
    plane = loss_plane(model, batches, d1, d2, [-0.5, 0.0, 0.5], [-0.5, 0.0, 0.5])
    assert plane[1, 1] == pytest.approx(mean_loss(model, batches), rel=1e-12)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
    with torch.no_grad():  # a corner by hand: w + 0.5 d1 - 0.5 d2 (row = b, column = a)
        for p, u, v in zip(model.parameters(), d1, d2):
            p.add_(0.5 * u - 0.5 * v)
    assert plane[0, 2] == pytest.approx(mean_loss(model, batches), rel=1e-5)


@pytest.mark.needs_data
def test_initial_model_is_the_one_training_starts_from(tmp_path):
    cfg = compose_cfg("trainer.seed=7")
    started = build_trainer(cfg, tmp_path).model.state_dict()
    rebuilt = initial_model(cfg.model, 7).state_dict()
    assert all(torch.equal(started[k], rebuilt[k]) for k in started)


@pytest.mark.needs_data
def test_checkpoint_model_is_rebuilt_from_its_own_config(tiny_checkpoint):
    model, saved = load_checkpoint_model(tiny_checkpoint, compose_tool("landscape", "checkpoint=x").data)
    assert list(saved.model.hidden_sizes) == [32] and model.layers[0][0].out_features == 32
    with pytest.raises(ConfigError, match=r"data.source='cifar10' is invalid: allowed 'mnist'"):
        load_checkpoint_model(tiny_checkpoint, compose_tool("landscape", "checkpoint=x", "data=cifar10").data)


@pytest.mark.needs_data
def test_landscape_tool_writes_figures_and_consistent_numbers(tiny_checkpoint, tmp_path):
    cfg = compose_tool("landscape", f"checkpoint={tiny_checkpoint}", "samples=256", "resolution=3",
                       "interpolation.points=5", "interpolation.range=[0,1]")
    landscape(cfg, tmp_path)
    for name in ("landscape_contour.png", "landscape_surface.png", "interpolation.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    numbers = json.loads((tmp_path / "landscape.json").read_text())
    model = load_checkpoint_model(tiny_checkpoint)[0]
    expected = mean_loss(model, fixed_batches(instantiate(cfg.data), 256, cfg.data.eval_batch_size))
    assert numbers["centre_loss"] == pytest.approx(expected, rel=1e-6)
    line = numbers["interpolation"]["loss"]
    assert line[-1] == pytest.approx(expected, rel=1e-5)  # t = 1: the checkpoint
    assert line[0] > 2.0 > expected  # t = 0: the untrained net, ~ln 10
    assert np.all(np.array(numbers["loss"]) >= 0)


def test_contour_of_a_plane_where_the_loss_reaches_zero_is_drawn():
    """A net fitting its samples perfectly has float32 loss 0 at the checkpoint; log-spaced levels start above it."""
    xs = np.linspace(-1, 1, 3)
    plane = np.array([[2.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 3.0]])
    figure = plot_contour(xs, xs, plane)
    assert figure.axes[0].collections[0].levels[0] == pytest.approx(1.0)
