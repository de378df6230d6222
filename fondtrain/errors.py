"""User-facing errors.

A `UserError` carries one sentence that says what is wrong and how to fix it. The CLI and
launch scripts print it without a traceback and exit with status 2; anything else is a
bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user (path, config, data): printed as one line, no traceback."""
