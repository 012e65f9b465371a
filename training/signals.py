"""SIGINT/SIGTERM during training: the loop finishes its step, saves a checkpoint and raises ``Interrupted``."""
import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Callable


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved at the step boundary."""

    def __init__(self, signum: int, step: int, run_dir: Path):
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; checkpoint saved. Continue with "
                         f"the same command plus trainer.resume=auto hydra.run.dir={run_dir}")
        self.signum = signum


@contextmanager
def stop_signals_to(request_stop: Callable[[int], None]):
    """Within the block, SIGINT and SIGTERM call ``request_stop(signum)`` instead of stopping the process."""
    previous = {s: signal.signal(s, lambda signum, _frame: request_stop(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
