"""Sampler options, declared once: a family (or a sampler) lists the options its ``sample`` takes, and the CLI
generates its flags from the declarations and checks every given value here, in one place.

A declaration names the keyword of ``sample`` (``name``), the flag (``--class`` for the keyword ``y``), the type, a
help text and the check; ``check_options`` refuses an option the family does not take and a value out of range,
each in one sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from genzoo.errors import ConfigError


@dataclass(frozen=True)
class Option:
    name: str  # the keyword argument of sample()
    type: type
    help: str
    flag: str = ""  # default: --NAME
    choices: tuple | None = None
    check: Callable[[Any], str | None] | None = None  # returns "must be ..." when a value is wrong

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def validate(self, value: Any) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{self.cli_flag} must be a finite number; got {value}.")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{self.cli_flag} must be one of {', '.join(map(str, self.choices))}; got {value!r}.")
        if self.check is not None and (problem := self.check(value)):
            raise ConfigError(f"{self.cli_flag} {problem}; got {value}.")


def positive(value) -> str | None:
    return None if value > 0 else "must be positive"


def non_negative(value) -> str | None:
    return None if value >= 0 else "must be non-negative"


TEMPERATURE = Option("temperature", float, "flows: scale of the prior; autoregressive: divides the logits; GAN: "
                                           "scale of z (default 1)", check=positive)
LABEL = Option("y", int, "class-conditional runs: the class to draw", flag="--class", check=non_negative)
GUIDANCE = Option("guidance", float, "class-conditional runs: classifier-free guidance scale w (1 = plain "
                                     "conditioning; default 1)", check=non_negative)
LANGEVIN_STEPS = Option("steps", int, "Langevin steps from noise (default: the run's --sample-steps)", check=positive)


def check_options(owner: str, declared: tuple[Option, ...], given: dict[str, Any]) -> None:
    """Refuse an option ``owner`` (e.g. "the gan family's sampler") does not declare, and check each value."""
    by_name = {o.name: o for o in declared}
    for name, value in given.items():
        if name not in by_name:
            flag = "--class" if name == "y" else "--" + name.replace("_", "-")
            raise ConfigError(f"{owner} takes no {flag} option.")
        by_name[name].validate(value)
