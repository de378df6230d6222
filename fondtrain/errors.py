"""User-facing errors.

A `UserError` carries one sentence that says what is wrong and how to fix it. The CLI and
launch scripts print it without a traceback and exit with status 2; anything else is a
bug and keeps its traceback.

Where every rank of a multi-process run stops on the same error at the same point
(`agreed`: the ranks found it together through a collective), only the main process says
it: the others raise it with `quiet=True` and exit 2 silently, so the sentence is printed
once, and the ranks leave together (`fondtrain.cli.run_or_exit`).
"""


class UserError(Exception):
    """Bad input from the user (path, config, data): printed as one line, no traceback;
    `quiet`: another rank prints the same sentence; `agreed`: every rank raises it."""

    def __init__(self, message: str = "", *, quiet: bool = False, agreed: bool = False):
        super().__init__(message)
        self.quiet = quiet
        self.agreed = agreed or quiet
