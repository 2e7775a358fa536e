"""The project's exceptions, each carrying its documented exit code.

Every failure a user can act on is one of these; the CLI prints ``str(exc)`` as one line
and exits with ``exc.exit_code``. Messages never contain a password.
"""

RUNTIME_FAILURE = 1
USAGE_ERROR = 2
AUTH_FAILURE = 3
INTEGRITY_FAILURE = 4
NO_SPACE = 5


class MirrorError(Exception):
    """Base class: a failure with a one-line message and an exit code."""

    exit_code = RUNTIME_FAILURE


class FetchError(MirrorError):
    """A file or listing could not be fetched after retries."""

    exit_code = RUNTIME_FAILURE


class UsageError(MirrorError):
    """Bad arguments, bad configuration or a bad listing."""

    exit_code = USAGE_ERROR


class AuthError(MirrorError):
    """The server refused our credentials."""

    exit_code = AUTH_FAILURE


class IntegrityError(MirrorError):
    """Content does not match what was recorded (hash, size, unsafe archive member)."""

    exit_code = INTEGRITY_FAILURE


class DiskSpaceError(MirrorError):
    """Not enough free space for what must be written."""

    exit_code = NO_SPACE


def exit_code_for(exc: BaseException) -> int:
    """Map any exception to the documented exit code."""
    if isinstance(exc, MirrorError):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return RUNTIME_FAILURE
