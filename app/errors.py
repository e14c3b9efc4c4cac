"""Errors the lab reports to its users as one clear sentence.

`LabError` and its subclasses carry messages written for the person at the keyboard; the CLI
prints them on one line and the UI shows them in an error box. Anything else that escapes a run
is a bug and is recorded with its traceback.
"""


class LabError(Exception):
    """A problem the user can fix: the message says what and how."""


class ConfigError(LabError):
    """A run configuration that cannot be trained (bad hyperparameter, unknown name, ...)."""


class BackboneError(LabError):
    """A backbone that cannot be found or loaded."""


class DatasetError(LabError):
    """A dataset that cannot be found, read or used for classification."""


class RunNotFound(LabError):
    """A run id that names no run of this store."""


class RunCancelled(Exception):
    """Raised inside a training loop when its run was cancelled; not a failure.

    `status` is what the run becomes: `cancelled` when a user asked, `interrupted` when the
    process is stopping."""

    def __init__(self, reason: str = "cancelled by the user", status: str = "cancelled"):
        super().__init__(reason)
        self.reason = reason
        self.status = status
