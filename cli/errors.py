"""User errors become one line on stderr and an exit code, never a traceback.

Exit codes: a ``UserError``'s own (2; 1 for a failed sanity check), 2 for Hydra's and OmegaConf's composition
errors and for files that cannot be read or written, 128+signal after SIGINT/SIGTERM/SIGHUP. Anything else is a bug
and keeps its traceback. ``exit_on_user_error`` guards the work (inside Hydra's job); ``exit_cleanly`` guards
Hydra itself: its composition errors (an unknown group option, an unknown key, an unparsable override), a run
directory it cannot create, and a signal that arrives outside training.
"""
import logging
import signal
import sys
from contextlib import contextmanager
from itertools import takewhile

from hydra.errors import (ConfigCompositionException, HydraException, InstantiationException, MissingConfigException,
                          OverrideParseException)
from hydra.utils import get_method
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, OmegaConfBaseException

from cli.validate import SUPPLIED, accepted_keys

from training.signals import STOP_SIGNALS, Interrupted
from utils.errors import UserError
from utils.suggest import nearest

log = logging.getLogger(__name__)

# OSError: a missing dataset (DatasetNotFoundError is also a UserError) or a file that cannot be read or written.
USER_ERRORS = (UserError, OSError, HydraException, OmegaConfBaseException)
_STOP_AT = ("See https://", "Config search path", "full_key:", "object_type=", "reference_type=")


class Stopped(KeyboardInterrupt):
    """SIGINT/SIGTERM/SIGHUP outside training: nothing to save. A BaseException, so Hydra's job wrapper lets it pass."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name} outside training; nothing new to save "
                         f"(run the same command again; trainer.resume=auto continues from the last checkpoint)")
        self.signum = signum


def one_line(error: BaseException) -> str:
    """The error's message as one line; Hydra's wrapped and multi-line messages are unwrapped and joined."""
    if isinstance(error, InstantiationException) and error.__cause__ is not None:
        error = error.__cause__  # "Error in call to target ...": report the constructor's own message
    if isinstance(error, MissingConfigException) and error.options and "/" in (error.missing_cfg_file or ""):
        group, option = error.missing_cfg_file.rsplit("/", 1)
        return f"{group}={option!r} is not an option of config group {group}: allowed {', '.join(error.options)}"
    if isinstance(error, OSError) and not isinstance(error, UserError) and error.filename is not None:
        return f"{error.strerror or type(error).__name__}: {error.filename}"
    if unknown := unknown_key(error):
        return unknown
    lines = [line for line in map(str.strip, str(error).splitlines()) if line]
    if not isinstance(error, HydraException):
        return lines[0] if lines else type(error).__name__
    lines = list(takewhile(lambda line: not line.startswith(_STOP_AT), lines))
    if isinstance(error.__cause__, OmegaConfBaseException):
        lines.append(f"({str(error.__cause__).splitlines()[0]})")
    if isinstance(error, OverrideParseException) and error.override not in " ".join(lines):
        lines.insert(0, f"cannot parse the override {error.override!r}:")
    return " ".join(lines) or type(error).__name__


def unknown_key(error: BaseException) -> str | None:
    """Hydra's "Could not override 'k'. To append to your config use +k=v" for a key the config lacks, said
    instead as the nearest existing keys; ``+k`` is advised only where the key's component takes it."""
    cause = error.__cause__
    if not (isinstance(error, ConfigCompositionException) and isinstance(cause, ConfigAttributeError)
            and cause.full_key and OmegaConf.is_dict(cause.parent_node)):
        return None
    key, parent = cause.full_key, cause.parent_node
    where = key.rpartition(".")[0]
    near = nearest(key, [f"{where}.{k}" if where else k for k in _flat_keys(parent)])
    message = f"{key} is not a key of {where or 'the config'}" + (f": did you mean {' or '.join(near)}?" if near else
                                                                  f" (its keys: {', '.join(_flat_keys(parent, 1))})")
    target, leaf = (parent._get_node("_target_") if "_target_" in parent else None), key.rpartition(".")[2]
    if where in SUPPLIED and target is not None and leaf not in SUPPLIED[where] \
            and leaf in accepted_keys(get_method(target._value())):
        message += f" ({target._value()} takes it: add it with +{key}=<value>)"
    return message


def _flat_keys(node, depth: int = 8) -> list[str]:
    """A config node's keys, nested ones dotted (down to ``depth``), without ``_target_``-like and Hydra's own."""
    keys = []
    for key in node.keys():
        if str(key).startswith("_") or key == "hydra":
            continue
        child = node._get_node(key)
        keys.append(str(key))
        if depth > 1 and OmegaConf.is_dict(child):
            keys += [f"{key}.{sub}" for sub in _flat_keys(child, depth - 1)]
    return keys


def exit_code(error: BaseException) -> int:
    cause = error.__cause__ if isinstance(error, InstantiationException) else error
    return getattr(cause, "exit_code", UserError.exit_code)


def _to_log_files(level: int, message: str) -> None:
    """Write ``message`` to the log files only (Hydra's ``train.log``), not to the console handler."""
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _exit(code: int, message: str):
    print(message, file=sys.stderr)
    sys.exit(code)


@contextmanager
def exit_on_user_error():
    """A user error: one line, its exit code; running out of memory: one line with what to lower, exit 2;
    SIGINT/SIGTERM/SIGHUP during training: 128+signal."""
    try:
        yield
    except USER_ERRORS as e:
        _exit(exit_code(e), f"error: {one_line(e)}")
    except Interrupted as e:
        _to_log_files(logging.WARNING, str(e))  # train.log keeps it; the console gets it once, on stderr
        _exit(128 + e.signum, str(e))
    except Exception as e:
        torch = sys.modules.get("torch")  # only the training stack runs out of memory, and it has loaded torch
        if torch is None or not isinstance(e, torch.OutOfMemoryError):
            raise
        _exit(2, f"error: out of memory ({one_line(e)[:160]}); lower data.batch_size (or data.eval_batch_size), "
                 f"or use a smaller model or trainer.precision=bf16")


@contextmanager
def exit_cleanly():
    """Around Hydra's main: its errors in one line, exit 2; SIGINT/SIGTERM/SIGHUP outside training exit 128+signal."""
    def stop(signum, _frame):
        raise Stopped(signum)
    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    stopping = False
    try:
        yield
    except SystemExit as e:  # a run stopped by a signal has saved and said so: more signals change nothing now
        stopping = e.code in {128 + s for s in STOP_SIGNALS}
        raise
    except Stopped as e:
        _exit(128 + e.signum, str(e))
    except (UserError, HydraException, OmegaConfBaseException) as e:
        _exit(exit_code(e), f"error: {one_line(e)}")
    except (OSError, ValueError) as e:  # Hydra creates the run directory, writes .hydra/ and train.log there (the
        # job's own errors were handled inside it, by exit_on_user_error); logging's ValueError wraps an OSError
        cause = e.__cause__ if isinstance(e, ValueError) else e
        if not isinstance(cause, OSError):
            raise
        _exit(2, f"error: cannot write the run directory ({one_line(cause)}): set hydra.run.dir=<a writable folder>")
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_IGN if stopping else handler)
