"""Console progress bars, one style for all: a tqdm bar on stderr that clears itself when done (``leave=False``).

Whether bars show is decided once per command from ``trainer.progress_bar``: ``auto`` shows them when stderr is a
terminal (never in a log captured to a file), ``true``/``false`` force it; only rank 0 of a DDP run shows any.
"""
import sys
from collections.abc import Iterable

from tqdm import tqdm


def show_progress(setting: bool | str, is_main: bool = True) -> bool:
    """``trainer.progress_bar`` (true | false | auto) resolved for this process."""
    return (sys.stderr.isatty() if setting == "auto" else bool(setting)) and is_main


def progress_bar(iterable: Iterable | None = None, *, desc: str, enabled: bool, total: int | None = None,
                 initial: int = 0) -> tqdm:
    """A bar over ``iterable`` (or updated by hand up to ``total``); disabled, it only passes the items through."""
    return tqdm(iterable, total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                disable=not enabled)
