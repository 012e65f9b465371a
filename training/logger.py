"""What a run writes: TensorBoard events, ``metrics.jsonl`` (one line per epoch) and ``summary.json``.

Everything goes through one RunLogger, created on every rank but writing only on rank 0.
Hyperparameters go into the same event file as the scalars (TensorBoard's HPARAMS tab), so a run
directory holds exactly one event file per (re)start.
"""
import functools
import json
import logging
import math
import threading
from pathlib import Path

import torch
from tensorboard.summary.writer.event_file_writer import _AsyncWriterThread
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from training.options import LOGGER_RULES, check_rules
from utils.errors import UserError
from utils.io import atomic_write, save_json

log = logging.getLogger(__name__)


# TensorBoard's CUSTOM SCALARS tab: loss, accuracy and LR first, train and val in one chart; the per-layer
# norms last, in a category of their own (a regex per chart: every layer's curve together).
LAYOUT = {
    "1 loss, accuracy, learning rate": {
        "loss (train per step, val per evaluation)": ["Multiline", ["^train/loss$", "^val/loss$"]],
        "accuracy (train per step, val per evaluation)": ["Multiline", ["^train/acc$", "^val/acc$"]],
        "learning rate": ["Multiline", ["^lr$"]],
    },
    "2 gradient and clipping": {
        "gradient norm before clipping": ["Multiline", ["^watch/grad_norm$"]],
        "clipping fired": ["Multiline", ["^watch/clip_fired$"]],
    },
    "3 per layer": {
        "gradient norm per layer": ["Multiline", ["^weights/grad_norm/"]],
        "weight norm per layer": ["Multiline", ["^weights/norm/"]],
    },
}


class EventWriteError(UserError, OSError):
    """TensorBoard events could not be written (a full disk, a folder made read-only)."""


def _writes_events(method):
    """A failed event write as one line. TensorBoard writes from a thread of its own, which keeps its error and
    raises it again in the next call that writes or flushes: here."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as e:
            if isinstance(e, EventWriteError):
                raise
            self.writer = None  # broken: nothing left to flush or close
            raise EventWriteError(f"could not write TensorBoard events to {self.run_dir / 'tb'} ({e.strerror or e}); "
                                  f"the checkpoints hold what was logged before them. Free space or fix the "
                                  f"folder, then continue with trainer.resume=auto") from None
    return wrapper


def _quiet_writer_threads() -> None:
    """Leave TensorBoard's writer threads' errors to ``_writes_events`` (one line), instead of also printing each
    thread's traceback; every other thread's error is printed as before."""
    previous = threading.excepthook
    if getattr(previous, "quiets_event_writers", False):
        return

    def hook(args):
        if not isinstance(args.thread, _AsyncWriterThread):  # tensorboard's private class: its writer thread
            previous(args)
    hook.quiets_event_writers = True
    threading.excepthook = hook


class RunLogger:
    def __init__(self, run_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True,
                 log_every_n_steps: int = 10, histograms: bool = True, flush_secs: int = 30):
        check_rules(LOGGER_RULES, "logger", dict(log_every_n_steps=log_every_n_steps, tensorboard=tensorboard,
                                                histograms=histograms, flush_secs=flush_secs))
        self.run_dir = Path(run_dir)
        self.enabled, self.log_every_n_steps, self.histograms = enabled, log_every_n_steps, histograms
        self.tensorboard, self.flush_secs = tensorboard, flush_secs
        self.writer: SummaryWriter | None = None

    @_writes_events
    def open(self, purge_step: int | None = None) -> None:
        """Start writing; ``purge_step`` (on resume) hides events logged after the checkpoint."""
        if self.enabled and self.tensorboard:
            _quiet_writer_threads()
            self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=purge_step, flush_secs=self.flush_secs)
            self.writer.add_custom_scalars(LAYOUT)

    @_writes_events
    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer:
            self.writer.add_scalar(tag, value, step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.scalar(tag, value, step)

    @_writes_events
    def histogram(self, tag: str, values: torch.Tensor, step: int) -> None:
        if self.writer and self.histograms:
            self.writer.add_histogram(tag, values.detach().float().cpu(), step)

    def epoch(self, record: dict) -> None:
        if self.enabled:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(finite_or_null(record), allow_nan=False) + "\n")

    def records(self) -> list[dict]:
        """The records of ``metrics.jsonl`` so far, in order (none when this rank does not write)."""
        path = self.run_dir / "metrics.jsonl"
        if not (self.enabled and path.exists()):
            return []
        return [r for r in map(_parse, path.read_text(errors="replace").splitlines()) if r is not None]

    def truncate_epochs(self, keep_through_epoch: int) -> None:
        """On resume: drop metric lines written after the checkpoint we resume from (the test scores, written after
        the last checkpoint, included: the run's end writes them again), and any line that does not parse (a crash
        or a full disk during the append tears the last one); say so when one is dropped."""
        path = self.run_dir / "metrics.jsonl"
        if not (self.enabled and path.exists()):
            return
        lines = [(line, _parse(line)) for line in path.read_text(errors="replace").splitlines() if line.strip()]
        torn = sum(record is None for _, record in lines)
        if torn:
            log.warning("%s: dropped %d line(s) that do not parse (torn by a crash or a full disk)", path, torn)
        kept = [line for line, record in lines if record is not None and record["epoch"] <= keep_through_epoch
                and "test_acc" not in record]
        atomic_write(path, lambda f: f.write("".join(line + "\n" for line in kept)), mode="w")

    def summary(self, values: dict) -> None:
        if self.enabled:
            save_json(finite_or_null(values), self.run_dir / "summary.json")

    @_writes_events
    def hparams(self, params: dict, metric_tags: list[str]) -> None:
        """Write the run's hyperparameters into this run's event file, with the scalar tags whose last values are
        its metrics (TensorBoard's HPARAMS tab reads them from the scalars already written)."""
        if not self.writer:
            return
        params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in params.items()}
        for event in hparams_summary(params, dict.fromkeys(metric_tags)):
            self.writer.file_writer.add_summary(event)

    @_writes_events
    def flush(self) -> None:
        if self.writer:
            self.writer.flush()

    @_writes_events
    def close(self) -> None:
        if self.writer:
            self.writer.close()
            self.writer = None


def finite_or_null(record: dict) -> dict:
    """NaN and inf become null: JSON has no literal for them (``json.dumps`` would write invalid ``NaN``)."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


def _parse(line: str) -> dict | None:
    """One metrics.jsonl record, or None for a line that is not one (torn, or not JSON)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("epoch"), int) else None
