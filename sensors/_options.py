"""Small checks shared by the transports' option parsers; errors are ``OptionError(path, message)``.

The room loader (controller/room/config.py) turns the path into ``file:line: nodes.<id>.<transport>.<path>``.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

from controller.room.config import OptionError

KeyPath = tuple[str | int, ...]

_KIND_NAMES = {str: "a string", bool: "a boolean", int: "an integer", dict: "a table"}


def typed(value: Any, path: KeyPath, kind: type) -> Any:
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        shown = f"{value!r}" if isinstance(value, (str, int, float, bool)) else type(value).__name__
        raise OptionError(path, f"expected {_KIND_NAMES[kind]}, got {shown}")
    return value


def only(table: Mapping[str, Any], path: KeyPath, allowed: tuple[str, ...]) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (allowed: {', '.join(allowed)})"
            raise OptionError(path + (key,), f"unknown option '{key}'{hint}")


def choice(table: Mapping[str, Any], path: KeyPath, key: str, choices: tuple[str, ...], default: str | None) -> str | None:
    if key not in table:
        return default
    value = typed(table[key], path + (key,), str)
    if value not in choices:
        close = difflib.get_close_matches(value, choices, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise OptionError(path + (key,), f"'{value}' is not one of {', '.join(choices)}{hint}")
    return value


def integer(table: Mapping[str, Any], path: KeyPath, key: str, default: int | None, lo: int, hi: int) -> int | None:
    if key not in table:
        if default is None:
            raise OptionError(path + (key,), f"missing option '{key}'")
        return default
    value = typed(table[key], path + (key,), int)
    if not lo <= value <= hi:
        raise OptionError(path + (key,), f"{value} is out of range: allowed {lo} to {hi}")
    return value


def text(value: Any, path: KeyPath) -> str:
    value = typed(value, path, str)
    if not value.strip():
        raise OptionError(path, "must not be empty")
    return value
