"""One-line errors for the lab's own config keys: ``key=value is invalid: allowed ...``."""
from training.validate import ConfigError


def require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: allowed {allowed}")
