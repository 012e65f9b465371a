"""The one error vocabulary: a ``UserError`` is something the user can fix; the command line prints its message
as one line and exits 2 (cli/errors.py). Every error a bad config, command line, dataset or checkpoint can cause
derives from it; anything else is a bug and keeps its traceback."""


class UserError(Exception):
    """A mistake the user can fix; the message names the value, what is wrong and what is allowed."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A bad config value: ``<key>=<value> is invalid: allowed <what>``."""


def require(ok: bool, key: str, value, allowed: str) -> None:
    """Raise ConfigError("<key>=<value!r> is invalid: allowed <allowed>") unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={repr(value)[:80]} is invalid: allowed {allowed}")
