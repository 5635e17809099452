"""The error every config check raises, and the two checks most fields need."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A bad configuration value; the message names the key and what is allowed."""


def choice(key: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of {sorted(allowed)}")


def positive(key: str, value: float, zero_ok: bool = False) -> None:
    if value is None or (value < 0 if zero_ok else value <= 0):
        raise ConfigError(f"{key}={value!r} must be {'>= 0' if zero_ok else '> 0'}")
