"""The one exception type the command line turns into a single line on stderr."""


class UsageError(Exception):
    """Expected bad input (a config, a toggle, a path): printed as one line, exit code 2, no traceback."""
