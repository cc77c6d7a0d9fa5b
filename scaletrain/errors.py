"""User-facing errors.

A `UserError` is a mistake in what the user asked for (bad key, missing file,
impossible value). The CLI prints its message on one line and exits with
code 2. Anything else is a bug and propagates with a traceback.
"""


class UserError(Exception):
    """A mistake by the user; the message names the bad key, file or value."""

    exit_code = 2


class ConfigError(UserError):
    """Invalid configuration: unknown key, wrong type, bad value, missing file."""


class DataError(UserError):
    """Bad input data: missing, corrupt or inconsistent shards."""
