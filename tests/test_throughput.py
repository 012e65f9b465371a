"""The throughput benchmark's machinery, and the Trainer's clock: training steps only."""
import sys
import time

import pytest
import torch.nn as nn

from conftest import DATA_ROOT, REPO
from cli.compose import build_trainer

sys.path.insert(0, str(REPO / "benchmarks"))
import throughput  # noqa: E402


def test_forward_flops_count_the_matrix_product():
    assert throughput.forward_flops_per_image(nn.Linear(10, 5, bias=False), (10,)) == 2 * 10 * 5


def test_matmul_peak_is_a_rate():
    assert throughput.matmul_gflops(throughput.torch.float32, n=64, reps=1) > 0


@pytest.mark.needs_data
def test_benchmark_reports_rates_and_ratios_for_every_variant():
    data = ["data=mnist", f"data.root={DATA_ROOT}", "data.train_subset=256", "data.val_subset=64",
            "data.batch_size=32", "logger=none"]
    asked = []
    result = throughput.benchmark("model=mlp model.hidden_sizes=[16]", data + ["trainer.precision=fp32"], steps=2,
                                  rounds=3, workers=0, peak=lambda precision: asked.append(precision) or 1.0)
    assert set(asked) == {"fp32"}  # an fp32 run never measures (minutes of emulated) bf16 products
    for name in throughput.VARIANTS:
        assert result[name]["images_per_sec"] > 0 and result[name]["gflops"] > 0
    for ratio in ("trainer_vs_usual", "trainer_vs_bare", "bare_vs_usual"):
        assert result[ratio] > 0
    assert result["train_gflop_per_image"] == pytest.approx(3 * 2 * (784 * 16 + 16 * 10) / 1e9)
    assert "trainer" in throughput.table([result])


@pytest.mark.needs_data
def test_train_images_per_sec_excludes_evaluation_and_checkpoint_writes(cfg, tmp_path, monkeypatch):
    trainer = build_trainer(cfg("trainer.epochs=2", "trainer.checkpoint_every_n_steps=2", "data.train_subset=256",
                                "data.batch_size=32"), tmp_path)
    pause = 0.3

    def slow(method):
        def wrapped(*args, **kwargs):
            time.sleep(pause)
            return method(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(trainer, "evaluate", slow(trainer.evaluate))
    monkeypatch.setattr(trainer, "save_checkpoint", slow(trainer.save_checkpoint))
    start = time.perf_counter()
    summary = trainer.fit()
    elapsed = time.perf_counter() - start
    steps = 2 * len(trainer.data.train)
    sleeps = 2 + 6 + 2  # evaluations; checkpoints after steps 2, 4, 6 of each 8-step epoch; end-of-epoch checkpoints
    assert trainer.train_images == steps * 32
    assert summary["train_images_per_sec"] == pytest.approx(trainer.train_images / summary["train_time"])
    assert summary["train_time"] < elapsed - 0.9 * sleeps * pause
