"""genzoo's own error types.

Every error a user can cause (bad input, a damaged file, an impossible option) is a ``GenzooError`` whose
message is one clear sentence. The CLI prints it to stderr and exits with ``exit_code``; it never shows a
traceback for these.
"""


class GenzooError(Exception):
    """Base class: the message is meant for the user, as is."""

    exit_code = 2


class ConfigError(GenzooError):
    """An unknown name, an out-of-range number, an impossible combination of options."""


class DataError(GenzooError):
    """A data file that is missing, truncated, corrupt or of the wrong kind."""


class RunError(GenzooError):
    """A path that is not a run folder, or a run folder whose files are damaged."""


class TrainingDiverged(GenzooError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 1


class ModelDiverged(Exception):
    """Raised by a family inside a training step when its own quantities explode (an EBM's energies); the
    trainer turns it into ``TrainingDiverged``, naming the step and the checkpoint it keeps."""
