"""The checkpoint tools (landscape, hessian, lr_finder, numerics) read the data the checkpoint was trained on, so a
checkpoint of an image-folder run needs no data overrides; a data key on the command line still wins."""
import json
import os
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from torchvision.io import write_png

from analysis.loading import fixed_batches, load_checkpoint_model, mean_loss, with_checkpoint_data
from cli.compose import train
from conftest import REPO, compose_cfg
from test_analysis_landscape import compose_tool
from utils.errors import ConfigError


@pytest.fixture(scope="module")
def folder_checkpoint(tmp_path_factory):
    """An MLP trained for 1 epoch on a two-class image folder (32x32 RGB noise PNGs, one class a little brighter)."""
    root = tmp_path_factory.mktemp("folder")
    generator = torch.Generator().manual_seed(0)
    for split, n in (("train", 16), ("test", 8)):
        for label, name in enumerate(["dark", "bright"]):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                noise = torch.randint(0, 100, (3, 32, 32), generator=generator)
                write_png((noise + 30 * label).to(torch.uint8), str(root / split / name / f"{i}.png"))
    run_dir = tmp_path_factory.mktemp("run")
    train(compose_cfg("trainer.device=cpu", "trainer.progress_bar=false", "trainer.sanity=skip", "trainer.epochs=1",
                      "model=mlp", "data=cifar10_folder", f"data.root={root}", "data.num_classes=2",
                      "data.val_split=0", "data.batch_size=8", "data.eval_batch_size=8", tiny=False), run_dir)
    return run_dir / "checkpoints" / "last.pt"


def test_landscape_of_an_image_folder_checkpoint_needs_no_data_overrides(folder_checkpoint, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATA_ROOT"}
    proc = subprocess.run([sys.executable, "-m", "analysis.landscape", f"checkpoint={folder_checkpoint}", "samples=16",
                           "resolution=3", "interpolation.points=3", "trainer.device=cpu", f"hydra.run.dir={tmp_path}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    model, saved = load_checkpoint_model(folder_checkpoint)
    assert saved.data.source == "image_folder"
    expected = mean_loss(model, fixed_batches(instantiate(saved.data), 16, 8))
    assert expected > 0 and json.loads((tmp_path / "landscape.json").read_text())["centre_loss"] == pytest.approx(
        expected, rel=1e-6)


def test_a_data_key_on_the_command_line_wins_over_the_checkpoint(folder_checkpoint):
    overrides = ["data.eval_batch_size=4", f"checkpoint={folder_checkpoint}"]
    cfg = with_checkpoint_data(compose_tool("hessian", *overrides), overrides)
    saved = load_checkpoint_model(folder_checkpoint)[1]
    assert (cfg.data.source, cfg.data.root, cfg.data.num_classes) == ("image_folder", saved.data.root, 2)
    assert cfg.data.eval_batch_size == 4 and saved.data.eval_batch_size == 8
    overrides = ["data=mnist", f"checkpoint={folder_checkpoint}"]
    cfg = with_checkpoint_data(compose_tool("hessian", *overrides), overrides)
    with pytest.raises(ConfigError, match=r"data.source='mnist' is invalid: allowed 'image_folder', what .* was "
                                          r"trained on \(leave data= out"):
        load_checkpoint_model(folder_checkpoint, cfg.data)


def test_without_a_checkpoint_the_tool_config_is_unchanged():
    cfg = compose_tool("lr_finder", "data.batch_size=32")
    assert with_checkpoint_data(cfg, ["data.batch_size=32"]) is cfg
