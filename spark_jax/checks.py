"""One-line checks of option values (no JAX): every failure is an `OptionError` naming the field.

Used by the option dataclasses (`spark_jax.options`), which check themselves, and by the run
config's cross-cutting checks (`spark_jax.runner.validation`). Messages read `name=value must be ...`.
"""

from __future__ import annotations

import math
import os


class OptionError(ValueError):
    """An option value that cannot work; the message names the field.

    field, value, requirement: set when the message is `f"{field}={value!r} {requirement}"`, so a
    caller that knows the field under another name (a config path) can re-word it (`renamed`).
    """

    def __init__(self, message: str, field: str | None = None, value=None, requirement: str = ""):
        super().__init__(message)
        self.field, self.value, self.requirement = field, value, requirement

    def renamed(self, name: str) -> "OptionError":
        """The same error with the field called `name` (unchanged when it has no field)."""
        if self.field is None:
            return self
        return type(self)(f"{name}={self.value!r} {self.requirement}", name, self.value, self.requirement)


def require(cond: bool, message: str) -> None:
    if not cond:
        raise OptionError(message)


def _fail_unless(cond: bool, name: str, value, requirement: str) -> None:
    if not cond:
        raise OptionError(f"{name}={value!r} {requirement}", name, value, requirement)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def one_of(value, name: str, options) -> None:
    _fail_unless(value in options, name, value, f"is not one of {', '.join(map(repr, options))}")


def integer(value, name: str, lo: int = 1, hi: int | None = None, why: str = "") -> None:
    """An int in [lo, hi] (bools are not ints here)."""
    ok = is_int(value) and value >= lo and (hi is None or value <= hi)
    rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
    _fail_unless(ok, name, value, f"must be an integer {rng}{why}")


def number(value, name: str, lo: float, hi: float = math.inf, *, lo_open: bool = False,
           hi_open: bool = False, why: str = "") -> None:
    """A finite int or float in the interval given (open or closed at each end)."""
    ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
          and (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi))
    if hi == math.inf:
        rng = f"> {lo:g}" if lo_open else f">= {lo:g}"
    else:
        rng = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    _fail_unless(ok, name, value, f"must be a finite number {rng}{why}")


def boolean(value, name: str) -> None:
    _fail_unless(isinstance(value, bool), name, value, "must be True or False")


def string(value, name: str) -> None:
    _fail_unless(isinstance(value, str), name, value, "must be a string")


def int_tuple(value, name: str) -> None:
    _fail_unless(isinstance(value, (tuple, list)) and len(value) >= 1 and all(is_int(v) and v >= 1 for v in value),
                 name, value, "must be a non-empty tuple of integers >= 1")


def ascending_taus(taus, name: str = "taus") -> None:
    """Candidate step counts: positive integers in strictly ascending order (SPEC step 7)."""
    ok = (isinstance(taus, (tuple, list)) and len(taus) >= 1 and all(is_int(t) and t >= 1 for t in taus)
          and all(b > a for a, b in zip(taus, taus[1:])))
    shown = tuple(taus) if isinstance(taus, list) else taus
    _fail_unless(ok, name, shown, "must be positive integers in strictly ascending order")


def env_switch(name: str) -> bool:
    """Whether environment switch $name is on: set to anything but '', '0', 'false' or 'no' (any case).
    Read by $SPARK_JAX_NO_DOWNLOAD (`setting.download.enabled`) and $SPARK_JAX_NO_PLOTS
    (`runner.curves.plots_enabled`)."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")
