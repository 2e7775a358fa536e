"""What the command line shows: its lines on stderr, the package's log on the terminal, Luigi's log in a file,
and the command lines it suggests. Only the cli package prints; every other module logs."""

import errno
import logging
import os
import shlex
import shutil
import stat
import sys
from pathlib import Path

from amsrepomirror.util import progress

#: What --quiet still shows: the lines an admin (or cron's mail) must act on. Everything else, progress, notes,
#: summaries and verdicts, is left out: with --quiet the exit code says how the run went.
KEPT_WHEN_QUIET = ("error:", "warning:", "WARNING:", "interrupted", "terminated")

_quiet = False


def quiet_mode(on: bool) -> None:
    """--quiet (``on``) or not: set for each command line, since tests and the demo run several in one process."""
    global _quiet
    _quiet = on
    logging.getLogger("amsrepomirror").setLevel(logging.WARNING if on else logging.INFO)
    progress.quiet(on)


def print_stderr(message: str) -> None:
    """One line for the admin on stderr (stdout carries only what a script may read); with --quiet, only
    errors, warnings and the line that says the command was interrupted or terminated."""
    if _quiet and not message.startswith(KEPT_WHEN_QUIET):
        return
    print(message, file=sys.stderr, flush=True)


def print_result(message: str) -> None:
    """A verdict on stdout (``bundle ... is intact``): left out with --quiet, where the exit code says it. What a
    command is asked to print (config's settings, plan's plan, the receipt) is printed whatever --quiet says."""
    if not _quiet:
        print(message, flush=True)


class _ConsoleFormat(logging.Formatter):
    """The package's log on the terminal: plain lines, warnings marked as such."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return f"warning: {message}" if record.levelno >= logging.WARNING else message


class _ConsoleHandler(logging.Handler):
    """Log lines on stderr, above any progress bar shown there (tqdm.write redraws the bar below; without tqdm
    loaded no bar was drawn, util.progress imports it for a terminal only)."""

    console = True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if "tqdm" in sys.modules:
                sys.modules["tqdm"].tqdm.write(line, file=sys.stderr)
            else:
                sys.stderr.write(line + "\n")
        except Exception:  # noqa: BLE001 -- logging's contract: a failing handler reports, never raises
            self.handleError(record)


def console_logging() -> None:
    """Messages the package's modules log (logging.getLogger(__name__)) go to stderr as lines."""
    logger = logging.getLogger("amsrepomirror")
    if not any(getattr(h, "console", False) for h in logger.handlers):
        handler = _ConsoleHandler()
        handler.setFormatter(_ConsoleFormat())
        logger.addHandler(handler)
    logger.propagate = False
    quiet_mode(False)  # until the command line says --quiet


def _open_log(log_file: Path):
    """``log_file`` opened for appending, or None when it cannot be used.

    Opened without following a symlink (or blocking on a fifo): a link planted at the log's name,
    e.g. in a shared AMSHOME, must not make this run append to, or create, a file elsewhere.
    """
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        for name in ("O_NOFOLLOW", "O_NONBLOCK", "O_CLOEXEC"):  # POSIX; Windows has no symlinks to plant here
            flags |= getattr(os, name, 0)
        fd = os.open(log_file, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            print_stderr(f"warning: {log_file} is a symlink; not writing the log there (remove the link to get the log back)")
        return None  # otherwise unwritable (read-only AMSHOME, full disk): the task reports that itself
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        print_stderr(f"warning: {log_file} is not a plain file (special file or hard link); not writing the log there")
        return None
    return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")


def luigi_logging(log_file: Path | None, verbose: bool) -> None:
    """Luigi's chatter goes to a log file (and the terminal with --verbose), never in the way of our summary."""
    logging.raiseExceptions = False  # a log file on a full disk must not print tracebacks over our one-line error
    log = _open_log(log_file) if log_file else None
    for name in ("luigi", "luigi-interface"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = False
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        if log:
            handler = logging.StreamHandler(log)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.addHandler(handler)
        if verbose:
            logger.addHandler(logging.StreamHandler(sys.stderr))
        if not logger.handlers:
            logger.addHandler(logging.NullHandler())


def tool_command() -> str:
    """How to run this tool as typed: ``amsrepomirror`` when that is on PATH, else its full path."""
    script = Path(sys.executable).with_name("amsrepomirror")
    found = shutil.which("amsrepomirror")
    if found and Path(found).resolve() == script.resolve():
        return "amsrepomirror"
    return shlex.quote(str(script)) if script.exists() else f"{shlex.quote(sys.executable)} -m amsrepomirror"


def command_line(args, *extra: str) -> str:
    """This run's command line with ``extra`` options added, ready to paste."""
    return f"{tool_command()} {shlex.join([*[a for a in args.argv if a not in extra], *extra])}"
