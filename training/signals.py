"""SIGINT/SIGTERM/SIGHUP during training: the loop finishes its step, saves a checkpoint and raises ``Interrupted``.

HUP is a closed terminal or a dropped ssh connection; QUIT keeps its default (a core dump: a deliberate hard stop).
"""
import signal
from contextlib import contextmanager
from typing import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(Exception):
    """SIGINT/SIGTERM/SIGHUP arrived; a checkpoint was saved at the step boundary."""

    def __init__(self, signum: int, step: int, continue_with: str):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved. Continue with "
                         f"the same command plus {continue_with}")
        self.signum = signum


@contextmanager
def stop_signals_to(request_stop: Callable[[int], None]):
    """Within the block, SIGINT, SIGTERM and SIGHUP call ``request_stop(signum)`` instead of stopping the process.
    Once the block ends in ``Interrupted`` (saved, on the way out to the exit) the handler stays, so a second
    Ctrl-C cannot cut the exit short with another message."""
    previous = {s: signal.signal(s, lambda signum, _frame: request_stop(signum)) for s in STOP_SIGNALS}
    stopping = False
    try:
        yield
    except Interrupted:
        stopping = True
        raise
    finally:
        for s, handler in ({} if stopping else previous).items():
            signal.signal(s, handler)
