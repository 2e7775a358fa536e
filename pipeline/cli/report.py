"""``--report FILE``: one JSON file per run, for a monitor. This module owns its format (REPORT_SCHEMA, the
fields below) and writes it; main() writes it once, after the command ended however it ended.

The fields every report holds (docs/operations.md, "Reports for monitoring", shows one):

    schema          REPORT_SCHEMA, raised when a field changes meaning or goes away (added fields keep it)
    tool, tool_version   "amsrepomirror" and its version
    command         the command run (mirror, bundle, verify, unpack, receipt)
    options         the option names given (never their values: any of them could hold a secret typed in the
                    wrong place, an account given as SCM's script takes it, a URL with user:password@)
    started, finished    UTC, ISO 8601 (2026-12-07T15:57:05Z)
    exit_code       the exit code the process ends with
    error           the last ``error: ...`` (or ``interrupted``/``terminated ...``) line printed on stderr, as
                    printed; "" on success

and beside them the command's own facts, which the command adds to ``args.report_facts`` (a dict) as far as
it got: a usage error before the work leaves them out.
"""

import argparse
import errno
import os
import sys
import traceback
from pathlib import Path

from amsrepomirror import __version__, errors
from amsrepomirror.cli.exit_codes import exit_code_after, stops_held_back
from amsrepomirror.cli.output import print_stderr
from amsrepomirror.errors import UsageError
from amsrepomirror.util.fsutil import atomic_write_json, why_unwritable
from amsrepomirror.util.timestamps import utc_now

#: The version of the report's format: a monitor checks it before reading the rest.
REPORT_SCHEMA = 1

#: The fields every report holds; a command's fact may not take one of these names.
ENVELOPE = ("schema", "tool", "tool_version", "command", "options", "started", "finished", "exit_code", "error")

#: The lines on stderr that say why a command stopped (Ctrl-C's and SIGTERM's lines, and unpack's own).
ERROR_PREFIXES = ("error:", "interrupted", "terminated")


def add_report_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", type=Path, metavar="FILE",
                   help="write what this run did and how it ended (exit code, error line, times) as JSON to FILE, "
                   "also when it fails (default: none)")


class _ErrorLines:
    """sys.stderr as it was, noting the last line that says why the command stopped (the error line is then
    the one the admin saw, whichever part of the command printed it)."""

    def __init__(self, stream):
        self._stream, self._partial, self.last = stream, "", ""

    def write(self, text: str) -> int:
        # What follows a line's last carriage return is what shows: a progress bar drawn and cleared before it
        # (tqdm, on a terminal) is not part of the line.
        lines = [line.rsplit("\r", 1)[-1] for line in (self._partial + text).split("\n")]
        self._partial = lines.pop()[-65536:]  # an unfinished line, kept until its end arrives
        for line in lines:
            if line.startswith(ERROR_PREFIXES):
                self.last = line
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class RunReport:
    """The report of one run: started when the command line was read, written by :meth:`write` at its end."""

    def __init__(self, path: Path, args: argparse.Namespace):
        self.path, self.started = path, utc_now()
        self.command = getattr(args, "command", "")
        self.options = sorted({a.split("=", 1)[0] for a in getattr(args, "argv", []) if a.startswith("--")})
        self.facts: dict = {}

    def check_writable(self, args: argparse.Namespace) -> None:
        """Refuse, before any work, a report that could not be written at the end, or whose writing would change
        what the command reads or writes: a bundle folder, the mirror, AMSHOME, the settings file (exit 2)."""
        why = "it is a directory" if self.path.is_dir() else why_unwritable(self.path.parent)
        if why:
            raise UsageError(f"cannot write the report --report {self.path}: {why}")
        report = self.path.absolute().resolve()
        for what, place in guarded_places(args):
            guarded = Path(place).absolute().resolve()
            if report == guarded or guarded in report.parents:  # guard: report-outside-guarded-places
                raise UsageError(f"--report {self.path} is in {what} {place}: the report would change what this "
                                 "command checks or writes; write it outside")

    def content(self, exit_code: int, error: str) -> dict:
        clashes = sorted(set(self.facts) & set(ENVELOPE))
        if clashes:  # a command's fact under an envelope field would hide it from the monitor
            raise ValueError(f"report facts may not be named {', '.join(clashes)}")
        return {**self.facts, "schema": REPORT_SCHEMA, "tool": "amsrepomirror", "tool_version": __version__,
                "command": self.command, "options": self.options, "started": self.started, "finished": utc_now(),
                "exit_code": exit_code,  # guard: report-exit-code
                "error": error if exit_code else ""}  # a success has no error, whatever a line of it looked like

    def write(self, exit_code: int, error: str) -> int:
        """Write the report; return the exit code to end with. A report that cannot be written is said in one
        line; it turns a success into a failure (1, or 5 on a full disk: the monitor would read a stale report)
        and leaves a failure's own code."""
        try:
            atomic_write_json(self.path, self.content(exit_code, error))
        except OSError as exc:
            why = f"report not written: {self.path}: {exc.strerror or exc}"
            if exit_code:
                print_stderr(f"warning: {why}")  # the command's own error line stays the one error line
                return exit_code
            print_stderr(f"error: {why}")
            full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
            return errors.NO_SPACE if full else errors.RUNTIME_FAILURE
        return exit_code


def guarded_places(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(what, path) of the folders and files the command reads or writes that a report must stay out of."""
    places = [(what, getattr(args, name, None)) for name, what in (
        ("bundle", "the bundle folder"), ("out", "the output"), ("mirror", "the mirror"), ("amshome", "AMSHOME"),
        ("config", "the settings file"))]
    scm_style = getattr(args, "scm_style", None) or []
    if len(scm_style) == 2:  # mirror LISTING_URL FOLDER
        places.append(("the mirror", scm_style[1]))
    if getattr(args, "amshome", False) is None and os.environ.get("AMSHOME"):  # the command takes $AMSHOME
        places.append(("AMSHOME", os.environ["AMSHOME"]))
    return [(what, str(place)) for what, place in places if place]


def run_reported(args: argparse.Namespace, run) -> int:
    """``run(args)`` with its report written at its end, however it ends: an exit code, SystemExit, Ctrl-C or a
    closed stdout that escaped it (as __main__ maps them), or a bug (exit 1, the traceback's last line as Python
    prints it). The report's place is checked first; without --report, just run."""
    args.report_facts = {}  # the command's facts (commands add to it whether or not a report is written)
    if getattr(args, "report", None) is None:
        return run(args)
    report = RunReport(args.report, args)
    report.facts = args.report_facts
    try:
        report.check_writable(args)
    except UsageError as exc:  # no report can be written: the one line says so, before any work
        return exit_code_after(exc)
    seen = _ErrorLines(sys.stderr)
    sys.stderr = seen
    try:
        code = run(args)
    except BaseException as exc:
        _restore(seen)
        with stops_held_back():
            report.write(*_escaped(exc, seen.last))
        raise
    _restore(seen)
    with stops_held_back():
        return report.write(code, seen.last)


def _escaped(exc: BaseException, last_line: str) -> tuple[int, str]:
    """The exit code and error line of an exception that leaves main() (what __main__ or Python make of it)."""
    if isinstance(exc, SystemExit):
        return (exc.code if isinstance(exc.code, int) else int(exc.code is not None)), last_line
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (errors.Terminated)
        return errors.exit_code_for(exc), errors.stop_line(exc)
    if isinstance(exc, BrokenPipeError):
        return errors.READER_GONE, ""
    return errors.RUNTIME_FAILURE, traceback.format_exception_only(type(exc), exc)[-1].strip()


def _restore(seen: _ErrorLines) -> None:
    if sys.stderr is seen:
        sys.stderr = seen._stream
