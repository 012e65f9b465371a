"""Optimizer paths on 2-D test functions: ``python -m analysis.toy [functions=[rosenbrock]] [only=[sgd,adam]]``.

For each function in ``functions`` (see analysis/toy/functions.py) every optimizer of configs/optimizer/ (or those
in ``only``) starts at ``setups.<f>.start`` and takes ``setups.<f>.steps`` steps at ``setups.<f>.lr.<optimizer>``
(analysis/toy/paths.py). Writes ``toy_<f>_paths.png`` (log-spaced contours of f - f_min with the paths),
``toy_<f>_loss.png`` (f(w_t) - f_min per step) and ``toy_<f>.gif`` (the paths drawn step by step).
"""

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from analysis.figures import FigureWriter
from analysis.toy import functions as toy_functions
from analysis.toy.paths import paths_on, selected_optimizers
from analysis.toy.plots import animate, plot_losses, plot_paths
from cli.entry import command, run
from utils.errors import require


@command("toy", validate_config=False)
def main(cfg: DictConfig) -> None:
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
    run(main)
