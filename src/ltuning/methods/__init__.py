"""Method registry: name -> class. The CLI's ``--method`` choices are this dict's keys."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Injection, Method
from .lt_prefix import LTPrefix
from .lt_prompt import LTPrompt
from .prefix import Prefix
from .prompt import Prompt

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (LTPrefix, LTPrompt, Prefix, Prompt)}


def learning_rate_text(x: float) -> str:
    """A learning rate as people write it: 3e-3, 2.5e-4 (``--help``, benchmark row and file names)."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None


__all__ = ["METHODS", "Injection", "Method", "get_method", "LTPrefix", "LTPrompt", "Prefix", "Prompt"]
