"""The one exception type for bad input a person can fix.

The library raises `UserInputError` with a message that says what is wrong and what to do; the command
line prints that message as one line on stderr and exits with code 2, the app shows it in the page.
Anything else that escapes is a bug and keeps its traceback.
"""


class UserInputError(ValueError):
    """Bad input (a file, a flag, a config value): the message is written for the person who gave it."""
