"""Console progress bars, one style for all: a tqdm bar on stderr that clears itself when done (``leave=False``).

Whether bars show is decided once per command from ``trainer.progress_bar``: ``auto`` shows them when stderr is a
terminal (never in a log captured to a file) and the job is not one of several running side by side (the parallel
launcher's jobs share one terminal line: their bars would overwrite each other), ``true``/``false`` force it; only
rank 0 of a DDP run shows any.
"""
import sys
from collections.abc import Iterable

from tqdm import tqdm


def show_progress(setting: bool | str, is_main: bool = True, side_by_side: bool = False) -> bool:
    """``trainer.progress_bar`` (true | false | auto) resolved for this process."""
    return (sys.stderr.isatty() and not side_by_side if setting == "auto" else bool(setting)) and is_main


def progress_bar(iterable: Iterable | None = None, *, desc: str, enabled: bool, total: int | None = None,
                 initial: int = 0) -> tqdm:
    """A bar over ``iterable`` (or updated by hand up to ``total``); disabled, it only passes the items through."""
    return tqdm(iterable, total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                disable=not enabled)
