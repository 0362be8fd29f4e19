"""One validator per kind of number: every numeric parameter, flag and key is checked by these, so the same value
gets the same sentence from the CLI, a YAML file, a request and a library call ("`<name>` must be <constraint>, got
<value>"; a flag's name is written as the flag, ``--kls``).

**The numeric envelope.** Decoding multiplies and divides its real parameters into numbers that must stay finite in
float32 (the models' log-probs and the decoder's scores): α·Q̂, Q̂/β and r/β in the soft value, (r − r_BL)/β in
the importance weights, β·log ρ in EFT, score/T in the choice. Rather than a check per combination that depends on
values seen only mid-decode, each factor is bounded once, before any model loads:

* every positive real parameter (α, β, the soft β, the temperatures, a KL target, an α of the testbed) lies in
  :data:`REAL_RANGE` = [1e-6, 1e6], or is 0 where 0 means "off" (α, the temperatures);
* every reward value, and every bound of a declared reward range, lies within ±:data:`REWARD_LIMIT` = 1e12
  (:class:`~tqstar.reward.Reward` checks each value it returns; a spec's ``range`` is checked when it is read).

Then the largest product decoding forms, α·(|r| + β·|log ρ|)/T with |log ρ| ≤ 1e4 per token over even 1e6 tokens,
is below 1e6·(1e12 + 1e6·1e10)/1e-6 = 1e34 < 3.4e38 (float32's largest), and every division has a denominator
of at least 1e-6. The soft value is computed in a shifted form that is finite for any such inputs
(:func:`tqstar.value.soft.soft_value`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .errors import ConfigError

#: The range of every positive real parameter (0 is allowed besides, where it switches something off).
REAL_RANGE = (1e-6, 1e6)
#: The largest |reward| decoding accepts (a value, or a bound of a declared range).
REWARD_LIMIT = 1e12


def shown(name: str) -> str:
    """How a message names a parameter: ```alpha``` (a parameter or key), ``--kls`` (a command-line flag)."""
    return name if name.startswith("-") else f"`{name}`"


def is_real(value: object) -> bool:
    """A number (an int or float, not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def real_constraint(*, zero: bool = False, none: str | None = None, plural: bool = False) -> str:
    """The constraint a real parameter must meet, as a message says it."""
    lo, hi = REAL_RANGE
    if plural:
        return f"finite numbers > 0 ({lo:g} to {hi:g})"
    text = f"a finite number >= 0 (0, or {lo:g} to {hi:g})" if zero else f"a finite number > 0 ({lo:g} to {hi:g})"
    return text + (f" or None (= {none})" if none else "")


def real_ok(value: object, *, zero: bool = False) -> bool:
    """Whether ``value`` is a real in :data:`REAL_RANGE` (or 0, with ``zero``)."""
    if not is_real(value) or not math.isfinite(value):
        return False
    return (zero and value == 0) or REAL_RANGE[0] <= value <= REAL_RANGE[1]


def check_real(value: object, name: str, *, zero: bool = False, none: str | None = None) -> None:
    """Raise :class:`ConfigError` unless ``value`` is a real in :data:`REAL_RANGE` (or 0 with ``zero``; or ``None``
    when ``none`` says what ``None`` means)."""
    if value is None and none is not None:
        return
    if not real_ok(value, zero=zero):
        raise ConfigError(f"{shown(name)} must be {real_constraint(zero=zero, none=none)}, got {value!r}", param=name,
                          value=value)


def check_reals(values: Sequence[object], name: str) -> None:
    """Raise :class:`ConfigError` unless ``values`` is a non-empty list of reals in :data:`REAL_RANGE` (a flag such as
    ``--kls`` or ``--alphas``)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigError(f"{shown(name)} must be a list of {real_constraint(plural=True)}, got {values!r}", param=name,
                          value=values)
    for value in values:
        if not real_ok(value):
            raise ConfigError(f"{shown(name)} must be {real_constraint(plural=True)}, got {_g(value)}", param=name,
                              value=value)


def check_int(value: object, name: str, *, low: int | None = 1, high: int | None = None,
              none: str | None = None, high_is: str = "") -> None:
    """Raise :class:`ConfigError` unless ``value`` is an int (not a bool) from ``low`` to ``high`` (each optional; the
    message names what ``high`` is with ``high_is``, e.g. another flag), or ``None`` when ``none`` says what ``None``
    means."""
    if value is None and none is not None:
        return
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        upper = f"{high_is} ({high})" if high_is else f"{high}"
        constraint = ("an integer" if low is None and high is None else f"an integer >= {low}" if high is None
                      else f"an integer from {low} to {upper}")
        constraint += f" or None (= {none})" if none is not None else ""
        raise ConfigError(f"{shown(name)} must be {constraint}, got {value!r}", param=name, value=value)


def check_reward_value(value: float) -> bool:
    """Whether a reward value (or a bound of a declared range) is within ±:data:`REWARD_LIMIT`."""
    return math.isfinite(value) and abs(value) <= REWARD_LIMIT


def _g(value: object) -> str:
    return f"{value:g}" if is_real(value) else repr(value)
