"""Shared fixtures: the real Hydra config, composed once per test, forced onto tiny sizes and the CPU, or onto the
device named by ``TEST_DEVICE`` (``TEST_DEVICE=cuda make test`` runs the suite's training on a GPU)."""
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(REPO / "configs")
DATA_ROOT = Path(os.environ.get("DATA_ROOT", REPO.parent / "shared" / "data")).resolve()
CIFAR_FOLDER = DATA_ROOT / "cifar10-jpeg75"

# Each pytest-xdist worker (make test: one per core) takes its share of the cores, and so does every train.py a test
# starts (OMP_NUM_THREADS): two workers on two cores each computing on two threads would slow both.
THREADS = max(1, min(2, torch.get_num_threads()) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
torch.set_num_threads(THREADS)
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))

TEST_DEVICE = os.environ.get("TEST_DEVICE", "cpu")
TINY = [f"trainer.device={TEST_DEVICE}", "trainer.progress_bar=false", "trainer.epochs=1", "data.train_subset=512",
        "data.val_subset=256", "data.test_subset=256", "data.batch_size=64", "trainer.sanity=skip",
        f"data.root={DATA_ROOT}"]


def compose_cfg(*overrides: str, tiny: bool = True):
    """The config train.py would see for these overrides (tiny defaults first, so overrides win)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[*(TINY if tiny else []), *overrides])


def read_mnist_once():
    """For a test module: read MNIST and its channel statistics once, not once per build (same values)."""
    import functools

    import data
    from data import sources
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sources.SOURCES, "mnist", functools.cache(sources.SOURCES["mnist"]))
        patch.setattr(data, "channel_stats", functools.cache(data.channel_stats))
        yield


@pytest.fixture
def cfg():
    return compose_cfg


def pytest_collection_modifyitems(config, items):
    if not (DATA_ROOT / "MNIST" / "raw").is_dir():
        skip = pytest.mark.skip(reason=f"no MNIST under {DATA_ROOT} (set DATA_ROOT)")
        for item in items:
            if "needs_data" in item.keywords:
                item.add_marker(skip)
