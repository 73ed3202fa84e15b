"""Errors that reach users of the command-line tool."""


class UserError(ValueError):
    """Bad input from the user (a path, a data file, an option, a config key).

    The CLI prints the message without a traceback and exits with status 2. The message says what was
    expected, what came, and how to fix it.
    """
