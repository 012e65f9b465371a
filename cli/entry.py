"""The one entry helper: every command (``train.py``, ``sanity_check.py``, ``python -m analysis.<tool>``) is

    @command("lr_finder")                      # configs/lr_finder.yaml; the config is validated first
    def main(cfg: DictConfig) -> None: ...

    if __name__ == "__main__":
        run(main)

``command`` runs the task inside Hydra's job with user errors as one line and an exit code (cli/errors.py); the
job's name (its log file) comes from the config's ``hydra.job.name``, since Hydra would name it after this file;
``run`` makes Hydra raise its own errors (an unknown option, an unparsable override) so they get the same
treatment, and under torchrun gives ranks other than 0 no Hydra output (training/distributed.py).
"""
import functools
import os
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Callable

import hydra
from omegaconf import DictConfig

from cli.errors import exit_cleanly, exit_on_user_error
from cli.validate import check_run_dir_overrides, validate
from training.distributed import hydra_argv
from utils.memory import keep_freed_memory

CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


def command(config_name: str, *, validate_config: bool = True,
            around: Callable[[], AbstractContextManager] = nullcontext) -> Callable:
    """Decorate ``task(cfg)`` into a Hydra main for configs/<config_name>.yaml; ``around()`` is entered inside the
    job, around validation and the task (train.py's: cli/report.py's record of how the job ended)."""
    def decorate(task: Callable[[DictConfig], object]) -> Callable:
        @hydra.main(version_base="1.3", config_path=CONFIGS, config_name=config_name)
        @functools.wraps(task)
        def main(cfg: DictConfig):
            with exit_on_user_error(), around():
                if validate_config:
                    validate(cfg)
                return task(cfg)
        return main
    return decorate


def run(main: Callable[[], object]) -> None:
    """Start a ``command``: Hydra's errors in one line (exit 2), SIGINT/SIGTERM outside the job exit 128+signal;
    freed host memory kept for reuse (utils/memory.py)."""
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them: one line instead
    keep_freed_memory()
    with exit_cleanly():
        check_run_dir_overrides(sys.argv[1:])
        sys.argv = hydra_argv(sys.argv)  # under torchrun: Hydra writes for rank 0 only; no sweeps
        main()
