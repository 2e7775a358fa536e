"""The project's exceptions, each carrying its documented exit code.

Every failure a user can act on is one of these; the CLI prints ``str(exc)`` as one line
and exits with ``exc.exit_code``. Messages never contain a password.
"""

import configparser

RUNTIME_FAILURE = 1
USAGE_ERROR = 2
AUTH_FAILURE = 3
INTEGRITY_FAILURE = 4
NO_SPACE = 5
#: Another run holds the lock of this mirror or AMSHOME: nothing was done; try again later (sysexits' EX_TEMPFAIL,
#: which cron wrappers and systemd units can retry on).
LOCK_HELD = 75


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


class LockHeld(MirrorError):
    """Another run holds the lock this run needs (same mirror, same AMSHOME): retry when it has finished."""

    exit_code = LOCK_HELD


class DiskSpaceError(MirrorError):
    """Not enough free space for what must be written."""

    exit_code = NO_SPACE


def settings_file_error(exc: configparser.Error) -> UsageError:
    """A settings file that does not parse: what is wrong and where, never the line itself (it may hold a password)."""
    where = f"{exc.source}, line {exc.lineno}" if getattr(exc, "lineno", None) else str(getattr(exc, "source", ""))
    if isinstance(exc, configparser.MissingSectionHeaderError):
        what = "a setting before the first [section]"
    elif isinstance(exc, configparser.DuplicateOptionError):
        what = f"[{exc.section}] {exc.option} is set twice"
    elif isinstance(exc, configparser.DuplicateSectionError):
        what = f"[{exc.section}] appears twice"
    elif isinstance(exc, configparser.ParsingError):
        where, what = f"{exc.source}, line {exc.errors[0][0]}", "not a [section], a key = value or a comment"
    else:
        what = exc.__class__.__name__
    return UsageError(f"bad settings file: {where}: {what}")


def settings_not_text(exc: UnicodeDecodeError, paths: list[str]) -> UsageError:
    """A settings file that is not UTF-8 text: which one (the first of ``paths`` that does not decode) and where."""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                f.read()
        except UnicodeDecodeError as bad:
            return UsageError(f"bad settings file: {path}: not UTF-8 text (byte {bad.object[bad.start]:#04x} at offset "
                              f"{bad.start}); save it as UTF-8")
        except (OSError, ValueError):  # absent or unreadable: Luigi skips those; not the one
            continue
    return UsageError(f"bad settings file: a settings file is not UTF-8 text ({exc.reason}); save it as UTF-8")


#: Ctrl-C: the exit code and the one line said about it, wherever the command was.
INTERRUPTED = 130
INTERRUPTED_LINE = "interrupted; rerun the same command to continue where it stopped"
#: SIGTERM (kill, systemctl stop, a batch system's time limit): 128 + 15, what a shell reports for a process
#: killed by it, and the same clean stop as Ctrl-C (the line says how to continue).
TERMINATED = 143
TERMINATED_LINE = "terminated (SIGTERM); rerun the same command to continue where it stopped"
#: The reader of stdout went away (``amsrepomirror config | head``): nothing more to say, as for SIGPIPE.
READER_GONE = 141


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: raised in the main thread so that it stops the way Ctrl-C does (every ``except
    KeyboardInterrupt`` cleans up for it too), and ends with TERMINATED instead of INTERRUPTED."""


#: When several tasks failed, the code that matters most to an admin wins.
EXIT_PRIORITY = (AUTH_FAILURE, NO_SPACE, INTEGRITY_FAILURE, LOCK_HELD, USAGE_ERROR, RUNTIME_FAILURE)


def exit_code_for(exc: BaseException) -> int:
    """Map any exception to the documented exit code."""
    if isinstance(exc, MirrorError):
        return exc.exit_code
    if isinstance(exc, Terminated):
        return TERMINATED
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    return RUNTIME_FAILURE


def stop_line(exc: KeyboardInterrupt) -> str:
    """The one line said when Ctrl-C or SIGTERM stopped the command."""
    return TERMINATED_LINE if isinstance(exc, Terminated) else INTERRUPTED_LINE
