"""Reading a Hydra multirun directory: one ``Run`` per job subdirectory that has written ``metrics.jsonl``.

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

logging.getLogger("tensorboard").setLevel(logging.WARNING)  # one INFO line per event file read otherwise
NOT_LABELS = ("data.root=", "trainer.device=", "hydra.", "experiment=")  # overrides that say nothing of a run


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
    def final_acc(self) -> float:
        if self.summary and self.summary.get("final_val_acc") is not None:
            return float(self.summary["final_val_acc"])
        return float(self.metrics[-1]["val_acc"])

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
        """(epoch, norm): per step from TensorBoard's ``grad_norm``, else per epoch from metrics.jsonl."""
        return self.step_scalars("grad_norm") or self.curve("grad_norm")


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
               summary=json.loads(summary_path.read_text()) if summary_path.is_file() else None)


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


def job_order(directory: Path) -> tuple[int, str]:
    """Hydra names jobs ``<n>_<overrides>``: sort by n, then by name."""
    head = directory.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, directory.name)
