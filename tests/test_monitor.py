"""The gradient monitor: per-layer norms every N steps, TensorBoard and history output, vanishing/exploding alarms."""
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cli.compose import train
from models import MLP
from training.logger import RunLogger
from training.monitor import HISTORY_FILE, GradientMonitor, read_history
from utils.errors import ConfigError
from utils.syncs import SyncCounter

from test_sanity import FAST, synthetic  # noqa: F401  (the fixture)


def tiny_mlp():
    torch.manual_seed(0)
    return MLP(in_channels=1, image_size=4, num_classes=3, hidden_sizes=[5, 4], batch_norm=True)


def backward(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(torch.randn(8, 1, 4, 4, generator=g)), torch.randint(0, 3, (8,), generator=g)).backward()


def monitor_in(tmp_path, **options):
    logger = RunLogger(tmp_path, log_every_n_steps=1)
    logger.open()
    return GradientMonitor(logger, **options), logger


def test_every_n_steps_it_records_each_layers_gradient_and_weight_norm(tmp_path):
    model = tiny_mlp()
    monitor, logger = monitor_in(tmp_path, every_n_steps=2)
    for step in range(5):
        backward(model, seed=step)
        monitor.observe(model, step)
    monitor.observe(model, 4)  # a closure optimizer evaluates (and observes) a step more than once
    monitor.flush()
    logger.close()
    history = monitor.history
    assert history.layers == ["layers.0.0", "layers.0.1", "layers.1.0", "layers.1.1", "head"]
    assert history.kinds == ["Linear", "BatchNorm1d", "Linear", "BatchNorm1d", "Float32Linear"]
    assert history.steps == [0, 2, 4]
    bn = model.layers[1][1]  # the last observation's gradients are still in place
    assert history.grad_norms[-1][3] == pytest.approx(torch.cat([bn.weight.grad, bn.bias.grad]).norm().item())
    assert history.weight_norms[-1][4] == pytest.approx(
        torch.cat([model.head.weight.flatten(), model.head.bias]).norm().item())
    assert read_history(tmp_path / HISTORY_FILE) == history
    (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [e.step for e in acc.Scalars("weights/grad_norm/layers.1.1")] == [0, 2, 4]
    assert acc.Scalars("weights/norm/head")[-1].value == pytest.approx(history.weight_norms[-1][4])
    assert {"weights/grad/head", "weights/value/layers.0.0"} <= set(acc.Tags()["histograms"])


def test_histograms_are_written_on_their_own_sparser_cadence(tmp_path):
    model = tiny_mlp()
    monitor, logger = monitor_in(tmp_path, every_n_steps=2, histograms_every_n_steps=5)
    for step in range(13):
        backward(model, seed=step)
        monitor.observe(model, step)
        if step % 4 == 3:  # flushes between observations: the copies taken at a step are what is written
            monitor.flush()
    monitor.flush()
    logger.close()
    (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events), size_guidance={"histograms": 0})  # 0: keep every event, not a sample
    acc.Reload()
    assert [e.step for e in acc.Scalars("weights/grad_norm/head")] == [0, 2, 4, 6, 8, 10, 12]
    assert [e.step for e in acc.Histograms("weights/grad/head")] == [0, 6, 10]  # the first observed step of each 5


def test_observing_waits_for_no_device_and_flushing_reads_once(tmp_path):
    model = tiny_mlp()
    monitor, logger = monitor_in(tmp_path, every_n_steps=1, histograms_every_n_steps=2)
    with SyncCounter() as syncs:
        for step in range(4):
            backward(model, seed=step)
            monitor.observe(model, step)
        assert syncs.events == [] and monitor.history.steps == []
        monitor.flush()
    logger.close()
    assert monitor.history.steps == [0, 1, 2, 3]
    assert syncs.events[0] == (None, "tolist") and [e for e in syncs.events if e[1] == "tolist"] == [(None, "tolist")]
    # (one read of the four observations' norms; then the histograms' host copies)


def test_steps_between_observations_return_before_touching_the_model(tmp_path):
    monitor, _ = monitor_in(tmp_path, every_n_steps=10)
    monitor.observe(object(), 7)  # any use of the "model" would raise
    assert monitor.history is None and not (tmp_path / HISTORY_FILE).exists()


def test_warns_once_a_layer_has_vanished_for_patience_observations_in_a_row(tmp_path, caplog):
    model = tiny_mlp()
    monitor, _ = monitor_in(tmp_path, every_n_steps=1, patience=3, histograms_every_n_steps=0)

    def observe(step, first_layer_scale):
        backward(model)
        model.layers[0][0].weight.grad.mul_(first_layer_scale)
        with caplog.at_level(logging.WARNING, logger="training.monitor"):
            monitor.observe(model, step)
            monitor.flush()
        return [r.getMessage() for r in caplog.records if "vanishing" in r.getMessage()]

    assert observe(0, 0.0) == [] and observe(1, 0.0) == []
    observe(2, 1.0)  # recovered: the streak starts again
    assert observe(3, 0.0) == [] and observe(4, 0.0) == []
    (message,) = observe(5, 0.0)
    assert message.startswith("vanishing gradients in 1 layer(s), norm below monitor.vanish_below=1e-06 "
                              "for 3 observations in a row")
    assert message.endswith(": layers.0.0 (0)")
    assert len(observe(6, 0.0)) == 1  # one warning per streak


def test_layers_vanishing_together_are_one_line(tmp_path, caplog):
    model = tiny_mlp()
    monitor, _ = monitor_in(tmp_path, every_n_steps=1, patience=2, histograms_every_n_steps=0)
    with caplog.at_level(logging.WARNING, logger="training.monitor"):
        for step in range(2):
            backward(model)
            for p in model.parameters():
                p.grad.zero_()
            monitor.observe(model, step)
        monitor.flush()
    (message,) = [r.getMessage() for r in caplog.records]
    layers = message.split(": ")[-1].split(", ")
    assert message.startswith(f"vanishing gradients in {len(layers)} layer(s)") and len(layers) >= 2
    assert layers[0] == "layers.0.0 (0)" and layers[-1] == "head (0)"


@pytest.mark.parametrize("scale,shown", [(1e9, "above monitor.explode_above=1000"), (float("nan"), "head (nan)")])
def test_exploding_or_non_finite_gradients_warn(tmp_path, caplog, scale, shown):
    model = tiny_mlp()
    monitor, _ = monitor_in(tmp_path, every_n_steps=1, patience=2, histograms_every_n_steps=0)
    with caplog.at_level(logging.WARNING, logger="training.monitor"):
        for step in range(2):
            backward(model)
            model.head.weight.grad.mul_(scale)
            monitor.observe(model, step)
        monitor.flush()
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("exploding gradients in 1 layer(s)") and shown in message


def test_a_training_run_logs_layer_norms_through_its_logger(cfg, synthetic, tmp_path):  # noqa: F811
    train(cfg(*synthetic("mnist"), *FAST, "monitor.every_n_steps=3", "trainer.max_steps=7"), tmp_path)
    history = read_history(tmp_path / HISTORY_FILE)
    assert history.steps == [0, 3, 6] and history.layers == ["layers.0.0", "layers.1.0", "head"]
    (events,) = (tmp_path / "tb").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    assert [e.step for e in acc.Scalars("weights/grad_norm/layers.0.0")] == [0, 3, 6]
    assert acc.Scalars("weights/grad_norm/head")[0].value == pytest.approx(history.grad_norms[0][2])


def test_a_resumed_run_keeps_the_last_row_of_a_step_seen_twice(tmp_path):
    header = {"layers": ["a"], "kinds": ["Linear"]}
    rows = [{"step": s, "grad_norm": [g], "weight_norm": [1.0]} for s, g in ((0, 1.0), (5, 2.0), (5, 3.0), (10, 4.0))]
    (tmp_path / HISTORY_FILE).write_text("".join(json.dumps(r) + "\n" for r in [header, *rows]))
    history = read_history(tmp_path / HISTORY_FILE)
    assert history.steps == [0, 5, 10] and history.grad_norms == [[1.0], [3.0], [4.0]]


def test_off_writes_nothing_and_bad_options_name_the_key(tmp_path):
    model = tiny_mlp()
    monitor, _ = monitor_in(tmp_path, every_n_steps=0)
    backward(model)
    monitor.observe(model, 0)
    assert monitor.history is None
    with pytest.raises(ConfigError, match=r"monitor.patience=0 is invalid: allowed an integer >= 1"):
        GradientMonitor(RunLogger(tmp_path), patience=0)
    with pytest.raises(ConfigError, match=r"monitor.explode_above=1e-07 is invalid"):
        GradientMonitor(RunLogger(tmp_path), explode_above=1e-7)
    with pytest.raises(ConfigError, match=r"monitor.histograms_every_n_steps=-1 is invalid: allowed an integer >= 0"):
        GradientMonitor(RunLogger(tmp_path), histograms_every_n_steps=-1)
