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


EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a checkpoint was written; rerun with resume=auto (docs/engine.md)


class Preempted(Exception):
    """Training stopped on a signal or stop request after writing its checkpoint."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, reason: str, step: int, checkpoint=None):
        super().__init__(f"interrupted by {reason} at step {step}; checkpoint {checkpoint}; "
                         f"rerun with resume=auto to continue")
        self.reason, self.step, self.checkpoint = reason, step, checkpoint

    def __reduce__(self):  # picklable (Ray ships exceptions between processes)
        return (Preempted, (self.reason, self.step, self.checkpoint))
