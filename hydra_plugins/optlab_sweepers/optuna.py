"""hydra-optuna-sweeper whose study lives in its sweep directory and whose ``n_trials`` is the study's total.

The plugin runs ``n_trials`` new trials on every invocation and numbers jobs from 0 again. Here a rerun of the same
command continues the study stored in ``storage`` (SQLite in the sweep directory) up to ``n_trials`` trials in all,
numbers the new jobs after the old ones, so no job directory is written twice, and seeds the sampler with its seed
plus the number of trials so far (reseeded alike, it would propose the first run's points again):
``python train.py -m hparams_search=optuna hydra.sweeper.n_trials=30`` after a 20-trial run adds 10 trials.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

if TYPE_CHECKING:  # Hydra imports every plugin module at each start-up: optuna (seconds) only once a sweep runs
    import optuna
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl


class ContinuingOptunaSweeper(OptunaSweeper):
    def sweep(self, arguments: list[str]) -> None:
        impl: OptunaSweeperImpl = self.sweeper
        Path(impl.config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)  # SQLite opens its file there
        trials, total = stored_trials(impl.storage, impl.study_name), impl.n_trials
        finished = sum(t.state.is_finished() for t in trials)
        if finished >= total:
            print(f"study {impl.study_name!r} already has {finished} finished trials (hydra.sweeper.n_trials={total}): "
                  f"nothing to add; raise hydra.sweeper.n_trials to continue it")
            return None
        impl.job_idx, impl.n_trials = len(trials), total - finished  # job number = Optuna's trial number
        sampler = impl.config.hydra.sweeper.sampler
        if trials and sampler.get("seed") is not None:
            impl.sampler = instantiate(sampler, seed=sampler.seed + len(trials))
        return impl.sweep(arguments)


def stored_trials(storage: str | None, study_name: str | None) -> list[optuna.trial.FrozenTrial]:
    """The stored study's trials (none without storage or study)."""
    import optuna
    if storage is None or study_name not in {s.study_name for s in optuna.get_all_study_summaries(storage)}:
        return []
    return optuna.load_study(study_name=study_name, storage=storage).trials
