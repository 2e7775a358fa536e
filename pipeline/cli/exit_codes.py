"""Which exit code a command ends with: the one place that turns an exception, a signal, or the failures of a
task graph, into a documented exit code (errors.py holds the codes) and the one line that says why."""

import contextlib
import ctypes
import errno
import os
import signal
import sys
import threading

from amsrepomirror import errors
from amsrepomirror.cli.output import print_stderr
from amsrepomirror.errors import EXIT_PRIORITY, MirrorError, exit_code_for
from amsrepomirror.util import progress

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
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (errors.Terminated)
        progress.clear_all()  # the bar's line wiped first: the message starts on a clean line
        print_stderr(errors.stop_line(exc))
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


def _on_sigterm(signum, frame) -> None:
    # Once: a second SIGTERM must neither break off the cleanup the first one started nor, arriving while the
    # interpreter exits (which puts Python's handlers back to the default), end the process without its code.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise errors.Terminated()


def stop_on_sigterm() -> None:
    """From now on SIGTERM (kill, systemctl stop, a batch system's time limit) stops this command as Ctrl-C
    does: errors.Terminated in the main thread takes the same way out (partial files stay partial, an unpack
    leaves the old tree or the new one), then one line and exit 143. Luigi's task processes forked from here
    die at once of SIGTERM (Luigi sends it when its worker stops) and of this process's death (kill -9)."""
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        signal.signal(signal.SIGTERM, _on_sigterm)
    if not _forking:
        _forking.append(os.getpid())
        os.register_at_fork(before=lambda: _forking.__setitem__(0, os.getpid()), after_in_child=_in_task_process)


@contextlib.contextmanager
def stops_held_back():
    """Ctrl-C and SIGTERM held back, then dropped, while the report of a command that has ended is written: the
    run is over, and its report and exit code say how it ended (a stop arriving now would make them disagree)."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        while signal.sigtimedwait(held, 0) is not None:  # those that came meanwhile: dropped
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


_forking: list[int] = []  # the pid of the process that forks (known once stop_on_sigterm ran)


def _in_task_process() -> None:
    """In a process forked from the command (Luigi's task processes): SIGTERM ends it on the spot (the
    command's handler would print a traceback there), and so does its parent's end, however it came."""
    if signal.getsignal(signal.SIGTERM) is not _on_sigterm:
        return  # forked outside a command (a test's own fork): left as it is
    parent = _forking[0]
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # guard: task-process-default-sigterm
    if sys.platform.startswith("linux"):
        try:  # prctl(PR_SET_PDEATHSIG, SIGTERM): the parent's end, even by SIGKILL, sends this process SIGTERM
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # guard: task-process-dies-with-command
        except (OSError, AttributeError):
            return
        if os.getppid() != parent:  # the parent was already gone before the line above
            os._exit(errors.TERMINATED)
