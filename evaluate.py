"""Score a checkpoint: ``python evaluate.py checkpoint=outputs/<date>/<time>/checkpoints/best.pt``.

Model, data and trainer settings come from the config saved in the checkpoint; data/model/trainer keys on the
command line replace them (``trainer.tta=flip``, ``data.root=...``, ``split=val``). Prints loss, accuracy and a
per-class table; writes ``evaluation.json`` and ``confusion_matrix.png`` into outputs/evaluate/<date>/<time>/
(cli/evaluate.py). A bad command line, path or file is one line on stderr and exit 2.
"""
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cli.entry import command, run


@command("evaluate", validate_config=False)  # the checkpoint's config, with the overrides, is validated instead
def main(cfg: DictConfig) -> None:
    from cli.evaluate import evaluate  # the training stack loads only once the command line is good
    hydra_cfg = HydraConfig.get()
    evaluate(cfg, list(hydra_cfg.overrides.task), hydra_cfg.runtime.output_dir)


if __name__ == "__main__":
    run(main)
