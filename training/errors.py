"""User errors become one line on stderr and a non-zero exit, never a traceback."""
import logging
import sys
from contextlib import contextmanager

from hydra.errors import InstantiationException

from data import DatasetNotFoundError
from training.checkpoint import CheckpointError
from training.trainer import DivergenceError, Interrupted
from training.validate import ConfigError

log = logging.getLogger(__name__)

USER_ERRORS = (ConfigError, CheckpointError, DatasetNotFoundError, DivergenceError, ValueError, PermissionError)


def one_line(error: BaseException) -> str:
    """Hydra wraps constructor errors ("Error in call to target ..."): report the cause itself."""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__
    return str(error).splitlines()[0] if str(error) else type(error).__name__


@contextmanager
def exit_on_user_error():
    """Exit 2 on a user error, 1 on a failed sanity check, 128+signal after SIGINT/SIGTERM."""
    from training.run import SanityError
    try:
        yield
    except Interrupted as e:
        log.warning(str(e))
        sys.exit(128 + e.signum)
    except SanityError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (InstantiationException, *USER_ERRORS) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
