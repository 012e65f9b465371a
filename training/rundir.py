"""One run directory, one run: a lock held while the run writes there, and no fresh start over a run.

Two processes writing one directory would delete each other's temporary files and interleave
``metrics.jsonl`` and TensorBoard events; a fresh start where a run already lives (a forgotten
``trainer.resume=auto``) would empty its history. Both are refused in one line, before anything is
written. The lock is ``fcntl.flock`` on ``<run dir>/.lock``: the kernel releases it when the process
ends, however it ends, so a killed run never leaves a stale lock; the file holds the holder's PID.
"""
import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from utils.errors import UserError

LOCK_FILE = ".lock"


class RunDirError(UserError):
    """The run directory is in use, or holds a run this command would start over."""


@contextmanager
def claim(run_dir: Path, resume: str | None):
    """Hold ``run_dir``'s lock for the block; refuse a fresh start (``resume`` None) where a run lives."""
    lock = run_dir / LOCK_FILE
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirError(f"{run_dir} is in use by process {holder} (it holds {lock}); wait for it to end, "
                              f"or give another hydra.run.dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        if resume is None and (found := run_files(run_dir)):
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise RunDirError(f"{run_dir} already holds a run ({shown}); continue it with "
                              f"trainer.resume=auto, or start anew with another hydra.run.dir")
        yield
    finally:
        os.close(fd)  # releases the lock


def run_files(run_dir: Path) -> list[str]:
    """What marks ``run_dir`` as holding a run: checkpoints, or epochs in ``metrics.jsonl``."""
    found = sorted(str(p.relative_to(run_dir)) for p in (run_dir / "checkpoints").glob("*.pt"))
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size:
        found.append(metrics.name)
    return found
