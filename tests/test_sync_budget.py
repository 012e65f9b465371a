"""The sync budget: between two logging flushes a training step never makes the host wait for the device.

``utils.syncs`` counts, on the CPU, every call that would synchronise on a GPU (``.item()``, ``.tolist()``,
``bool(t)``, ``f"{t:.3f}"``, ``.cpu()``, ``torch.tensor(v, device=...)``, ...), by step (step k: from the k-th
training forward to the next). With ``TEST_DEVICE=cuda`` the steps that do not flush also run under
``torch.cuda.set_sync_debug_mode("error")``.
"""
import pytest
import torch

from cli.compose import build_trainer
from training import meters
from utils.syncs import count_per_step, optimizer_step_counters

pytestmark = pytest.mark.needs_data

LOG_EVERY, STEPS = 10, 25  # flushes after steps 10, 20 and at the end of the run (25)


@pytest.mark.parametrize("overrides", [(), ("model=cnn", "trainer.clip.mode=norm")], ids=["default", "cnn+clip"])
def test_no_sync_between_flushes(cfg, tmp_path, overrides):
    """The default config (monitor and TensorBoard on, progress bar shown) and a conv net with clipping."""
    trainer = build_trainer(cfg(f"trainer.max_steps={STEPS}", "data.train_subset=2048",
                                f"logger.log_every_n_steps={LOG_EVERY}", "trainer.progress_bar=true",
                                "monitor.every_n_steps=5", "monitor.histograms_every_n_steps=5", *overrides), tmp_path)
    flushes = {LOG_EVERY, 2 * LOG_EVERY, STEPS}
    counter = count_per_step(trainer.fit, trainer.model, flushes, optimizer_step_counters(trainer.optimizer))
    between = {step: counter.at(step) for step in range(1, STEPS + 1) if step not in flushes}
    assert all(not calls for calls in between.values()), {s: c for s, c in between.items() if c}
    assert counter.at(LOG_EVERY), "the flush reads the pending numbers: the counter must see it"


def test_the_training_clock_waits_for_the_gpu_before_it_reads(monkeypatch):
    """The host runs ahead of a GPU: the clock stops only once the queued steps are done (images/s stays true)."""
    events, clock = [], iter([10.0, 12.5])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("synchronize", device)))
    monkeypatch.setattr(meters.time, "perf_counter", lambda: events.append(("read clock",)) or next(clock))
    watch = meters.Stopwatch(device=torch.device("cuda", 1))
    watch.start()
    watch.stop()
    assert events == [("read clock",), ("synchronize", torch.device("cuda", 1)), ("read clock",)]
    assert watch.total == watch.epoch == 2.5
