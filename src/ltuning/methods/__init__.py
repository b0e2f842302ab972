"""Method registry: name -> class. The CLI's ``--method`` choices are this dict's keys."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Injection, Method
from .lt_prefix import LTPrefix
from .lt_prompt import LTPrompt
from .prefix import Prefix
from .prompt import Prompt

METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (LTPrefix, LTPrompt, Prefix, Prompt)}


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose one of {sorted(METHODS)}") from None


__all__ = ["METHODS", "Injection", "Method", "get_method", "LTPrefix", "LTPrompt", "Prefix", "Prompt"]
