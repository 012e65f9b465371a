"""Atomic file writes: a crash leaves either the old file or the new one, never a torn one."""
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through ``write(file)`` into a temporary file beside ``path``, fsync, then rename into place.

    If the write fails (a full disk), the temporary file is removed and ``path`` is untouched; a SIGKILL
    leaves ``path`` untouched too, and the ``.<name>.*.tmp`` file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp's 0600 would outlive the rename; open() respects the umask
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def umask() -> int:
    """The process's umask (reading it means setting it; set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: _torch_save(obj, f))


def _torch_save(obj: Any, f) -> None:
    """``torch.save``, except that a failed write (a full disk) raises its OSError, not torch's RuntimeError."""
    try:
        torch.save(obj, f)
    except RuntimeError as e:
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise


def save_json(obj: Any, path: str | os.PathLike) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), mode="w")
