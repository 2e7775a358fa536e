"""Which exit code a command ends with: the one place that turns an exception, or the failures of a task
graph, into a documented exit code (errors.py holds the codes) and the one line that says why."""

import errno
import os
import sys

from amsrepomirror import errors
from amsrepomirror.cli.output import print_stderr
from amsrepomirror.errors import MirrorError, exit_code_for
from amsrepomirror.util import progress

#: When several tasks failed, the code that matters most to an admin wins.
EXIT_PRIORITY = (errors.AUTH_FAILURE, errors.NO_SPACE, errors.INTEGRITY_FAILURE, errors.USAGE_ERROR, errors.RUNTIME_FAILURE)

#: What a command lets through to its exit code; anything else is a bug and shows its traceback.
EXPECTED = (KeyboardInterrupt, MirrorError, OSError)


def most_severe_failure(failures: list[dict]) -> dict | None:
    """The failure whose exit code matters most to an admin (auth, space, integrity, usage, runtime)."""
    for code in EXIT_PRIORITY:
        for failure in failures:
            if failure.get("code") == code:
                return failure
    return failures[0] if failures else None


def exit_code_after(exc: BaseException) -> int:
    """Say on stderr, in one line, why the command stopped on ``exc`` (one of EXPECTED); return its exit code."""
    if isinstance(exc, KeyboardInterrupt):
        progress.clear_all()  # the bar's line wiped first: the message starts on a clean line
        print_stderr(errors.INTERRUPTED_LINE)
        return exit_code_for(exc)
    if isinstance(exc, BrokenPipeError):
        return reader_gone()
    if isinstance(exc, MirrorError):
        print_stderr(f"error: {exc}")
        return exit_code_for(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        print_stderr(f"error: disk full: {exc.filename or ''} {exc.strerror}".replace("  ", " "))
        return errors.NO_SPACE
    print_stderr(f"error: {exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
    return errors.RUNTIME_FAILURE


def reader_gone() -> int:
    """stdout's reader closed the pipe (``| head``): say nothing (it would not be read) and end as SIGPIPE would;
    stdout goes to /dev/null so that the interpreter's last flush cannot fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout already closed or not a file: nothing left to flush
        pass
    return errors.READER_GONE
