"""Rules about values, stated once where a value is defined (a dataclass field, a constructor) and reused by the
config validator: a predicate and the words for what it allows.

    Rule(ok, allowed).check("trainer.epochs", 0)  ->  ConfigError: trainer.epochs=0 is invalid: allowed an integer >= 1
"""
import math
from dataclasses import field, fields
from typing import Any, Callable, NamedTuple

from utils.errors import require


class Rule(NamedTuple):
    ok: Callable[[Any], bool]
    allowed: str

    def check(self, key: str, value) -> None:
        require(self.ok(value), key, value, self.allowed)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def one_of(*allowed) -> Rule:
    return Rule(lambda v: any(v == a and type(v) is type(a) for a in allowed),
                "one of " + ", ".join(map(str, allowed)))


def integer(lo: int, hi: int | None = None, nullable: bool = False) -> Rule:
    return Rule(lambda v: (v is None and nullable) or (is_int(v) and lo <= v and (hi is None or v <= hi)),
                f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else "") + (" or null" if nullable else ""))


def number(lo: float, hi: float = math.inf, lo_open: bool = False, hi_open: bool = False,
           nullable: bool = False) -> Rule:
    def ok(v):
        if v is None:
            return nullable
        return is_number(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
    span = (f"a number {'>' if lo_open else '>='} {lo}" if hi == math.inf else
            f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}")
    return Rule(ok, span + (" or null" if nullable else ""))


def list_of(item: Rule, length: int | None = None) -> Rule:
    return Rule(lambda v: isinstance(v, list) and (length is None or len(v) == length) and all(item.ok(x) for x in v),
                f"a list of {'' if length is None else f'{length} '}items, each {item.allowed}")


BOOL = Rule(lambda v: isinstance(v, bool), "true or false")
BOOL_OR_AUTO = Rule(lambda v: isinstance(v, bool) or v == "auto", "true, false or auto")


def option(default, rule: Rule, key: str | None = None):
    """A dataclass field with its rule; ``key``: its config key when it differs from the field's name."""
    return field(default=default, metadata={"rule": rule, "key": key})


def rules_of(cls, prefix: str) -> dict[str, Rule]:
    """``{"<prefix>.<key>": rule}`` for every field of the dataclass ``cls`` declared with ``option``."""
    return {f"{prefix}.{f.metadata['key'] or f.name}": f.metadata["rule"] for f in fields(cls) if "rule" in f.metadata}


def check_fields(obj, prefix: str) -> None:
    """Apply each ``option`` field's rule to its value (from a dataclass's ``__post_init__``)."""
    for f in fields(obj):
        if "rule" in f.metadata:
            f.metadata["rule"].check(f"{prefix}.{f.metadata['key'] or f.name}", getattr(obj, f.name))
