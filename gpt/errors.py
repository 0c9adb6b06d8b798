"""The one exception type for bad input a person can fix.

The library raises `UserInputError` with a message that says what is wrong and what to do; the command
line prints that message as one line on stderr and exits with code 2, the app shows it in the page (and,
when `field` names a config field, next to that field's control). Anything else that escapes is a bug
and keeps its traceback. `is_int`/`is_number` are the checks the config dataclasses share.
"""

import math


class UserInputError(ValueError):
    """Bad input (a file, a flag, a config value): the message is written for the person who gave it.

    `field`: the config field the message is about (e.g. "learning_rate"), so the UI can mark that control."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def is_int(value: object) -> bool:
    """A real int for config validation (`True` is an int to Python, not to a person)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float, booleans excluded."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
