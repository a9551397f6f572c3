"""The two error types every command turns into one line and an exit code."""


class KdcliError(Exception):
    """A failed run: printed as one line, exit code 1."""

    exit_code = 1


class UsageError(KdcliError):
    """Bad input from the user (flags, config, names): printed as one line, exit code 2."""

    exit_code = 2
