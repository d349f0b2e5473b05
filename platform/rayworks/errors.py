"""Exceptions a user can cause, each with a message that says how to fix it."""


class RayworksError(Exception):
    """Base class: the CLI prints the message on one line and exits non-zero."""

    exit_code = 1


class ConfigError(RayworksError):
    """A config or spec is malformed, inconsistent, or names something missing.

    Raised before anything is submitted or started; the CLI exits with code 2. The message
    is always one line (a user's value may hold line breaks; they become spaces).
    """

    exit_code = 2

    def __init__(self, message: object = "") -> None:
        super().__init__(" ".join(str(message).splitlines()))


class ClusterError(RayworksError):
    """The cluster cannot be reached, refused our token, or failed to start."""

    exit_code = 2


class JobFailedError(RayworksError):
    """A submitted job ended in FAILED or STOPPED."""

    exit_code = 1
