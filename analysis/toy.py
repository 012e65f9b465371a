"""Optimizer paths on 2-D test functions: ``python -m analysis.toy [functions=[rosenbrock]] [only=[sgd,adam]]``.

For each function in ``functions`` (see analysis/toy_functions.py) every optimizer of configs/optimizer/ (or those
in ``only``) starts at ``setups.<f>.start`` and takes ``setups.<f>.steps`` steps at ``setups.<f>.lr.<optimizer>``
(analysis/toy_paths.py). Writes ``toy_<f>_paths.png`` (log-spaced contours of f - f_min with the paths),
``toy_<f>_loss.png`` (f(w_t) - f_min per step) and ``toy_<f>.gif`` (the paths drawn step by step).
"""
import os

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from analysis import toy_functions
from analysis.checks import require
from analysis.figures import FigureWriter
from analysis.toy_paths import paths_on
from analysis.toy_plots import animate, plot_losses, plot_paths
from training.errors import exit_cleanly, exit_on_user_error


def selected_optimizers(cfg: DictConfig) -> dict[str, dict]:
    """The ``optimizers.<name>`` configs named in ``only`` (all of them when ``only`` is null)."""
    every = OmegaConf.to_container(cfg.optimizers, resolve=True)
    names = list(every) if cfg.only is None else list(cfg.only)
    for name in names:
        require(name in every, "only", name, "names among " + ", ".join(every))
    return {name: every[name] for name in names}


@hydra.main(version_base="1.3", config_path="../configs", config_name="toy")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        out = FigureWriter(HydraConfig.get().runtime.output_dir)
        optimizers, common = selected_optimizers(cfg), OmegaConf.to_container(cfg.common)
        for name in cfg.functions:
            fn = toy_functions.get(name)
            require(name in cfg.setups, "functions", name, "functions with an entry under setups")
            setup = cfg.setups[name]
            paths = paths_on(fn, optimizers, dict(setup.lr), list(setup.start), setup.steps, common)
            out.save(plot_paths(fn, paths), f"toy_{name}_paths")
            out.save(plot_losses(fn, paths), f"toy_{name}_loss")
            out.add(animate(fn, paths, out.out_dir / f"toy_{name}.gif", cfg.gif_frames))
            for p in paths:
                print(f"{name:>10} {p.optimizer:>9}: end ({p.points[-1, 0]:+.4f}, {p.points[-1, 1]:+.4f}), "
                      f"f - f_min {float(p.losses[-1]) - fn.f_min:.3e}{', diverged' if p.diverged else ''}")
        print(out.report())


if __name__ == "__main__":
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them: one line below
    with exit_cleanly():
        main()
