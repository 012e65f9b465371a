"""Gradient flow in a 20-layer MLP, and the figure that shows it."""
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from analysis.gradient_flow import GradientFlowFigure, draw, weight_layers
from conftest import DATA_ROOT, REPO
from models import MLP
from training.logger import RunLogger
from training.monitor import HISTORY_FILE, GradientHistory, GradientMonitor

DEPTH_20 = [64] * 19  # 19 hidden layers and the head: 20 weight layers


def first_layer_grad_norm(activation: str, batch_norm: bool, init: str) -> float:
    """||dL/dW_1|| of a freshly initialised 20-layer MLP on one fixed MNIST-shaped batch."""
    torch.manual_seed(0)
    model = MLP(in_channels=1, image_size=28, num_classes=10, hidden_sizes=DEPTH_20, activation=activation,
                batch_norm=batch_norm, init=init)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
    F.cross_entropy(model(x), y).backward()
    return model.layers[0][0].weight.grad.norm().item()


@pytest.mark.parametrize("init", ["default", "kaiming_normal", "xavier_normal", "orthogonal"])
def test_sigmoid_starves_the_first_layer_where_relu_with_batch_norm_does_not(init):
    sigmoid = first_layer_grad_norm("sigmoid", False, init)
    relu_bn = first_layer_grad_norm("relu", True, init)
    print(f"{init}: first-layer grad norm sigmoid {sigmoid:.3e}, relu+bn {relu_bn:.3e}, ratio {relu_bn / sigmoid:.3e}")
    assert relu_bn / sigmoid > 1e6  # sigmoid' <= 1/4 per layer: 19 layers shrink the gradient geometrically


def monitored_run(run_dir, activation, batch_norm, steps=3):
    """A few SGD steps of the 20-layer MLP with the monitor writing its history into ``run_dir``."""
    torch.manual_seed(0)
    model = MLP(in_channels=1, image_size=8, num_classes=10, hidden_sizes=DEPTH_20, activation=activation,
                batch_norm=batch_norm)
    monitor = GradientMonitor(RunLogger(run_dir, tensorboard=False), every_n_steps=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        optimizer.zero_grad()
        x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)
        F.cross_entropy(model(x), y).backward()
        monitor.observe(model, step)
        optimizer.step()
    monitor.flush()
    return monitor.history


def test_the_figure_draws_the_linear_and_conv_layers_float32_head_included():
    history = GradientHistory(["conv", "bn", "fc1", "head"], ["Conv2d", "BatchNorm2d", "Linear", "Float32Linear"])
    assert weight_layers(history) == [0, 2, 3]


def test_figure_for_a_run_and_for_a_sweep(tmp_path):
    for i, (activation, batch_norm) in enumerate([("sigmoid", False), ("relu", True)]):
        run = tmp_path / "sweep" / f"{i}_run"
        monitored_run(run, activation, batch_norm)
        (run / ".hydra").mkdir()
        overrides = [f"model.activation={activation}", f"model.batch_norm={batch_norm}", "data.root=x"]
        OmegaConf.save(OmegaConf.create(overrides), run / ".hydra" / "overrides.yaml")
    result = subprocess.run([sys.executable, "-m", "analysis.gradient_flow", f"dir={tmp_path / 'sweep'}"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    table = result.stdout
    assert (tmp_path / "sweep" / "gradient_flow.png").stat().st_size > 10_000
    assert "model.activation=sigmoid model.batch_norm=False" in table and "data.root" not in table
    ratios = [float(line.split()[-1]) for line in table.splitlines()[1:3]]  # last layer / first layer
    assert ratios[0] > 1e6 > 10 > ratios[1]
    assert draw(tmp_path / "sweep" / "0_run", tmp_path / "one.png") == tmp_path / "one.png"
    assert (tmp_path / "one.png").stat().st_size > 10_000
    with pytest.raises(FileNotFoundError, match="no grad_norms.jsonl in"):
        draw(tmp_path / "sweep" / "0_run" / ".hydra")


def test_hydra_callback_draws_at_the_end_of_a_job_and_of_the_sweep(tmp_path):
    run = tmp_path / "0_relu"
    monitored_run(run, "relu", False, steps=2)
    callback = GradientFlowFigure()
    job = SimpleNamespace(hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(run)}}}))
    callback.on_job_end(None, job)
    assert (run / "gradient_flow.png").is_file()
    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert (tmp_path / "gradient_flow.png").is_file()


@pytest.mark.slow
@pytest.mark.needs_data
def test_gradient_flow_experiment_sweeps_and_leaves_its_figures(tmp_path):
    command = [sys.executable, "train.py", "-m", "experiment=gradient_flow", "model.init=default",
               "model.batch_norm=false", "trainer.max_steps=10", "data.train_subset=512", "trainer.device=cpu",
               f"data.root={DATA_ROOT}", f"hydra.sweep.dir={tmp_path}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = sorted(p.parent for p in tmp_path.glob(f"*/{HISTORY_FILE}"))
    assert len(runs) == 2 and all((r / "gradient_flow.png").is_file() for r in runs)
    assert (tmp_path / "gradient_flow.png").is_file()
