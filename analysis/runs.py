"""Reading a Hydra multirun directory: one ``Run`` per job subdirectory that has written ``metrics.jsonl``, and
``Group``s of runs that differ only in their seed.

A job directory holds ``.hydra/overrides.yaml`` (its command-line overrides), ``.hydra/config.yaml`` (the composed
config), ``.hydra/hydra.yaml`` (among others Hydra's group choices), ``metrics.jsonl`` (one line per epoch),
``summary.json`` (when the run finished) and ``tb/`` (per-step scalars, ``grad_norm`` among them).
"""
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from utils.errors import require

# Otherwise one INFO line per event file read, and for a resumed run a WARNING of 'out of order event.step' from
# the purge of the steps it ran again (what the Trainer's SummaryWriter(purge_step=...) asks for)
logging.getLogger("tensorboard").setLevel(logging.ERROR)
NOT_LABELS = ("data.root=", "trainer.device=", "hydra.", "experiment=")  # overrides that say nothing of a run
SEED_KEYS = ("trainer.seed=", "data.seed=")  # overrides that repeat a setting rather than change it


@dataclass
class Run:
    directory: Path
    overrides: list[str]
    config: dict
    choices: dict
    metrics: list[dict]
    summary: dict | None
    label: str = field(default="")

    @property
    def optimizer(self) -> str:
        """The optimizer group's choice (``adam``), else the class name of its ``_target_``."""
        return self.choices.get("optimizer") or self.config["optimizer"]["_target_"].rsplit(".", 1)[-1]

    @property
    def lr(self) -> float:
        opt = self.config["optimizer"]
        return float(opt["lr"] if "lr" in opt else opt["base"]["lr"])  # Lookahead keeps it in its base

    @property
    def seed(self) -> int:
        return int(self.config["trainer"]["seed"])

    @property
    def setting(self) -> tuple[str, ...]:
        """What the run was asked to be, its seed left out: runs with equal settings are repeats."""
        return tuple(sorted(o for o in self.overrides if not o.startswith(NOT_LABELS + SEED_KEYS)))

    def score(self, name: str) -> float:
        """A number of summary.json (``best_val_acc``, ``test_acc``, ``train_time``, ...); NaN where the run did
        not record it (an unfinished run, a run without a val split, a run from before the test set was kept)."""
        value = (self.summary or {}).get(name)
        return float("nan") if value is None else float(value)

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, values) of one metrics.jsonl column."""
        rows = [m for m in self.metrics if key in m]
        return np.array([m["epoch"] for m in rows]), np.array([m[key] for m in rows], dtype=float)

    def step_scalars(self, tag: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(epoch, value) per logged step of a TensorBoard scalar (epoch = step / steps per epoch, read from
        metrics.jsonl's global_step), or None when the run has no such scalar."""
        tb = self.directory / "tb"
        if not tb.is_dir() or "global_step" not in self.metrics[0]:
            return None
        events = EventAccumulator(str(tb), size_guidance={"scalars": 0})
        events.Reload()
        if tag not in events.Tags()["scalars"]:
            return None
        steps_per_epoch = self.metrics[0]["global_step"] / self.metrics[0]["epoch"]
        scalars = events.Scalars(tag)
        return np.array([(s.step + 1) / steps_per_epoch for s in scalars]), np.array([s.value for s in scalars])

    def grad_norm(self) -> tuple[np.ndarray, np.ndarray]:
        """(epoch, norm): per step from TensorBoard's ``watch/grad_norm``, else per epoch from metrics.jsonl."""
        return self.step_scalars("watch/grad_norm") or self.curve("grad_norm")


def read_run(directory: Path) -> Run:
    hydra_dir = directory / ".hydra"
    hydra_yaml = hydra_dir / "hydra.yaml"
    choices = OmegaConf.load(hydra_yaml).hydra.runtime.choices if hydra_yaml.is_file() else {}
    summary_path = directory / "summary.json"
    return Run(directory=directory,
               overrides=list(OmegaConf.load(hydra_dir / "overrides.yaml")),
               config=OmegaConf.to_container(OmegaConf.load(hydra_dir / "config.yaml")),
               choices={k: v for k, v in dict(choices).items() if isinstance(v, str)},
               metrics=[json.loads(line) for line in (directory / "metrics.jsonl").read_text().splitlines() if line],
               summary=current_names(json.loads(summary_path.read_text())) if summary_path.is_file() else None)


def current_names(summary: dict) -> dict:
    """A summary.json under today's names. Until ``train_time`` was named, ``wall_time`` held the seconds in
    training steps and ``process_time`` the whole job's: such a file's ``wall_time`` is read as ``train_time``, its
    ``process_time`` (None where absent) as ``wall_time``."""
    if "train_time" in summary or "wall_time" not in summary:
        return summary
    kept = {k: v for k, v in summary.items() if k not in ("wall_time", "process_time")}
    return {**kept, "train_time": summary["wall_time"], "wall_time": summary.get("process_time")}


def read_runs(sweep_dir: str | Path) -> list[Run]:
    """Every job of the sweep that logged at least one epoch, in job order, each labelled by the overrides in
    which it differs from the others (its directory name when there is only one)."""
    sweep_dir = Path(sweep_dir)
    require(sweep_dir.is_dir(), "sweep_dir", str(sweep_dir), "an existing multirun directory")
    jobs = [d for d in find_jobs(sweep_dir, "metrics.jsonl")
            if (d / ".hydra" / "overrides.yaml").is_file() and (d / "metrics.jsonl").stat().st_size]
    require(bool(jobs), "sweep_dir", str(sweep_dir), "a directory whose job subdirectories hold .hydra/ and "
            "metrics.jsonl (python train.py -m ... writes them)")
    runs = [read_run(d) for d in jobs]
    for run, label in zip(runs, labels(jobs)):
        run.label = label
    return runs


def find_jobs(sweep_dir: Path, holding: str) -> list[Path]:
    """The job directories below ``sweep_dir`` whose run wrote the file ``holding``, in job order; at any depth,
    since an override value holding a '/' nests Hydra's job directory."""
    jobs = {p.parent for p in sweep_dir.rglob(holding)}
    return sorted(jobs, key=lambda job: job_order(sweep_dir / job.relative_to(sweep_dir).parts[0]))


def labels(jobs: list[Path]) -> list[str]:
    """Each job's command-line overrides that not every job shares and that say something of the run (not
    ``NOT_LABELS``); its directory name when none remain (or it has no ``.hydra/overrides.yaml``)."""
    overrides = [list(OmegaConf.load(j / ".hydra" / "overrides.yaml")) if (j / ".hydra" / "overrides.yaml").is_file()
                 else [] for j in jobs]
    shared = set.intersection(*(set(o) for o in overrides)) if len(jobs) > 1 else set()
    return [" ".join(o for o in own if o not in shared and not o.startswith(NOT_LABELS)) or job.name
            for own, job in zip(overrides, jobs)]


@dataclass
class Group:
    """Runs of one setting, differing only in their seed; ``varied``: the overrides that set it apart from the
    sweep's other groups."""
    varied: tuple[str, ...]
    setting: tuple[str, ...]
    runs: list[Run]

    @property
    def label(self) -> str:
        return " ".join(map(short_override, self.varied)) or "all runs"

    @property
    def n(self) -> int:
        return len(self.runs)

    def scores(self, name: str) -> np.ndarray:
        return np.array([run.score(name) for run in self.runs])

    def curves(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(epochs, values (n, epochs)) of one metrics.jsonl column, cut to the epochs every run reached."""
        curves = [run.curve(key) for run in self.runs]
        length = min(len(epochs) for epochs, _ in curves)
        return curves[0][0][:length], np.stack([values[:length] for _, values in curves])

    @property
    def optimizer(self) -> str:
        return self.runs[0].optimizer

    @property
    def lr(self) -> float:
        return self.runs[0].lr


def group_runs(runs: list[Run]) -> list[Group]:
    """Runs pooled by setting (everything but the seed), in order of first appearance; each group labelled by the
    overrides in which it differs from the other groups."""
    by_setting: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        by_setting.setdefault(run.setting, []).append(run)
    shared = set.intersection(*(set(s) for s in by_setting))
    return [Group(tuple(o for o in setting if o not in shared), setting, members)
            for setting, members in by_setting.items()]


def short_override(override: str) -> str:
    """``key=value`` with a float value cut to 4 significant digits (Optuna samples 16)."""
    key, _, value = override.partition("=")
    try:
        return f"{key}={float(value):.4g}" if "." in value or "e" in value.lower() else override
    except ValueError:
        return override


def job_order(directory: Path) -> tuple[int, str]:
    """Hydra names jobs ``<n>_<overrides>``: sort by n, then by name."""
    head = directory.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, directory.name)
