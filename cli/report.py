"""What a person sees when a run or a sweep ends: where it went, how it did, how to look at it.

``job(run_dir, job_num)`` wraps one training job. A finished job prints the closing block (run directory,
best/final val acc, test acc, training time, the ``tensorboard --logdir`` line); a failed one logs its error (so it
lands in ``train.log``), marks ``summary.json`` ``status: failed`` with the error, and, inside a sweep, lets the next
job run. In a sweep every console line of a job starts with its number (``[03]``, as its directory ``03_...``):
the parallel launcher's jobs print side by side. ``SweepReport`` (a Hydra callback in configs/train.yaml) prints
the sweep directory when a sweep starts, a table of its jobs when it ends, and exits 1 if any job failed.
"""
import json
import logging
import os
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from cli.errors import one_line

log = logging.getLogger(__name__)


@contextmanager
def job(run_dir: str | Path, job_num: int | None):
    """Record how the job inside ended; in a sweep (``job_num``: the job's number, None outside a sweep) a failed
    job does not stop the next ones. Under DDP only rank 0 writes and prints (the other ranks' run directory is
    ``.``)."""
    in_sweep = job_num is not None
    with console_prefix(f"[{job_num:02d}] ") if in_sweep else nullcontext(), outcome(Path(run_dir), in_sweep):
        yield


@contextmanager
def outcome(run_dir: Path, in_sweep: bool):
    """How the job ended: the closing block and summary.json, or the error logged and written."""
    started = time.perf_counter()
    main_rank = int(os.environ.get("RANK", "0")) == 0
    try:
        yield
    except Exception as e:
        from training.rundir import RunDirError
        from training.signals import Interrupted
        if isinstance(e, Interrupted) or not main_rank:  # Ctrl-C stops the whole sweep, its checkpoint saved
            raise
        if isinstance(e, RunDirError):  # another process's or another run's directory: write nothing there; in a
            raise  # sweep, every job would be refused the same way (a forgotten trainer.resume=auto)
        message = one_line(e)
        if in_sweep:  # the console says which job failed; the sweep goes on
            log.error("job failed: %s", message)
        try:
            if not in_sweep:  # the command line prints it once, on stderr
                with open(run_dir / "train.log", "a") as f:
                    f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}][{__name__}][ERROR] - failed: {message}\n")
            _write_summary(run_dir, status="failed", error=message)
        except OSError:  # an unwritable run directory: the error itself says so
            pass
        if not in_sweep:
            raise
    else:
        if main_rank:
            summary = _write_summary(run_dir, status="finished", wall_time=time.perf_counter() - started)
            log.info("\n%s", closing_block(run_dir, summary))


@contextmanager
def console_prefix(prefix: str):
    """Inside the block every line the console's log handlers print starts with ``prefix``; log files are left
    as they are."""
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    formatters = [h.formatter for h in handlers]
    for handler, formatter in zip(handlers, formatters):
        handler.setFormatter(PrefixFormatter(prefix, formatter or logging.Formatter()))
    try:
        yield
    finally:
        for handler, formatter in zip(handlers, formatters):
            handler.setFormatter(formatter)


class PrefixFormatter(logging.Formatter):
    """``formatter``'s text with ``prefix`` before each of its lines (a table logged in one record too)."""

    def __init__(self, prefix: str, formatter: logging.Formatter):
        super().__init__()
        self.prefix, self.formatter = prefix, formatter

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(self.prefix + line for line in self.formatter.format(record).split("\n"))


def closing_block(run_dir: Path, summary: dict) -> str:
    """Five aligned lines: where the run went, how it scored (val, then the test set's one score), how long it
    trained, how to look at it."""
    length = f"({_count(summary.get('epochs'), 'epoch')}, {_count(summary.get('global_step'), 'step')})"
    val = (f"best {_acc(summary['best_val_acc'])}, final {_acc(summary.get('final_val_acc'))}"
           if summary.get("best_val_acc") is not None else "none measured")
    rows = [("run directory", str(run_dir)),
            ("val acc", f"{val} {length}"),
            ("test acc", _test_scores(summary)),
            ("train time", f"{_duration(summary.get('train_time'))} of training steps, "
                           f"{_duration(summary.get('wall_time'))} in all"),
            ("tensorboard", f"tensorboard --logdir {run_dir}")]
    return "\n".join(f"{name:<14} {value}" for name, value in rows)


class SweepReport(Callback):
    """The sweep directory when a sweep starts; its jobs as a table when it ends (exit 1 if any failed)."""

    def on_multirun_start(self, config, **kwargs) -> None:
        log.info("sweep directory %s", config.hydra.sweep.dir)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        jobs = sweep_jobs(sweep_dir)
        failed = [j for j in jobs if j["status"] != "finished"]
        log.info("sweep %s: %d jobs, %d failed\n%s\ntensorboard --logdir %s", sweep_dir, len(jobs), len(failed),
                 sweep_table(jobs), sweep_dir)
        if failed:
            sys.exit(1)


def sweep_jobs(sweep_dir: Path) -> list[dict]:
    """One row per job directory (holding .hydra/overrides.yaml), in job order, with the overrides that vary."""
    jobs, varying = [], set(swept_keys(sweep_dir))
    for overrides_file in sweep_dir.glob("*/.hydra/overrides.yaml"):
        run_dir = overrides_file.parent.parent
        summary = _summary(run_dir)
        overrides = list(OmegaConf.load(overrides_file))
        shown = [o for o in overrides if o.split("=", 1)[0].lstrip("+~") in varying] or overrides
        jobs.append({"num": int(run_dir.name.split("_", 1)[0]) if run_dir.name[0].isdigit() else -1,
                     "overrides": " ".join(shown), "dir": run_dir.name,
                     "best_val_acc": summary.get("best_val_acc"), "final_val_acc": summary.get("final_val_acc"),
                     "status": summary.get("status", "no summary: killed, or still running"),
                     "error": summary.get("error", "")})
    return sorted(jobs, key=lambda j: (j["num"], j["dir"]))


def sweep_table(jobs: list[dict]) -> str:
    rows = [("job", "what varies", "best val acc", "final", "status")]
    rows += [(str(j["num"]), j["overrides"], _acc(j["best_val_acc"]), _acc(j["final_val_acc"]),
              j["status"] + (f": {j['error']}" if j["error"] else "")) for j in jobs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(row, widths)), row[-1]]) for row in rows)


def swept_keys(sweep_dir: str | Path) -> list[str]:
    """The keys a sweep varies: command-line overrides with several values and ``hydra.sweeper.params``, read from
    the ``multirun.yaml`` Hydra writes into the sweep directory before any job starts (so every launcher's jobs
    can read it)."""
    path = Path(sweep_dir) / "multirun.yaml"
    if not path.is_file():
        return []
    cfg = OmegaConf.load(path)
    overrides = OverridesParser.create().parse_overrides(list(cfg.hydra.overrides.task))
    keys = [o.key_or_group for o in overrides if o.is_sweep_override()]
    return keys + [k for k in (OmegaConf.select(cfg, "hydra.sweeper.params") or {}) if k not in keys]


def job_dirname(num: int, sweep_dir: str, overrides) -> str:
    """A sweep job's directory, and so its TensorBoard run name: ``07_optimizer=adam,optimizer.lr=0.01``, the
    zero-padded job number and only what the sweep varies (all the job's overrides if nothing is known to vary)."""
    pairs = [o.split("=", 1) for o in overrides if "=" in o]
    varying = set(swept_keys(sweep_dir))
    shown = [f"{k.lstrip('+~')}={v}" for k, v in pairs if k.lstrip("+~") in varying] or [f"{k}={v}" for k, v in pairs]
    return f"{num:02d}_" + ",".join(shown).replace("/", "-")


def run_name(experiment, model, optimizer) -> str:
    """A single run's name, the end of its directory and so its TensorBoard run name: the experiment, or else
    ``<model>_<optimizer>`` (``resnet20_sgd``)."""
    return str(experiment) if experiment not in (None, "None") else f"{model}_{optimizer}"


OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)
OmegaConf.register_new_resolver("run_name", run_name, replace=True)


def _write_summary(run_dir: Path, **values) -> dict:
    from utils.io import save_json  # torch: not loaded before a config error needs it
    summary = {**_summary(run_dir), **values}
    save_json(summary, run_dir / "summary.json")
    return summary


def _summary(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _test_scores(summary: dict) -> str:
    if summary.get("best_epoch") is None:  # no validation split: the last weights were tested
        return f"{_acc(summary.get('test_acc'))} (last weights; data.val_split=0, nothing chosen)"
    return f"{_acc(summary.get('test_acc'))} (best.pt), {_acc(summary.get('test_acc_last'))} (last weights)"


def _count(n, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _acc(value) -> str:
    return "-" if value is None else f"{value:.2%}"


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes)} min {seconds:.0f} s" if minutes else f"{seconds:.1f} s"
