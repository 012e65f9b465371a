"""Score a checkpoint: ``python evaluate.py checkpoint=outputs/<date>/<time>/checkpoints/best.pt``.

Model, data and trainer settings come from the config saved in the checkpoint; data/model/trainer keys on the
command line replace them (``trainer.tta=flip``, ``data.root=...``, ``split=val``). Prints loss, accuracy and a
per-class table; writes ``evaluation.json`` and ``confusion_matrix.png`` into outputs/evaluate/<date>/<time>/
(cli/evaluate.py). A bad command line, path or file is one line on stderr and exit 2.
"""
import os

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from training.errors import exit_cleanly, exit_on_user_error


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        from cli.evaluate import evaluate
        hydra_cfg = HydraConfig.get()
        evaluate(cfg, list(hydra_cfg.overrides.task), hydra_cfg.runtime.output_dir)


if __name__ == "__main__":
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them: one line below
    with exit_cleanly():
        main()
