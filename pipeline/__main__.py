"""``python -m amsrepomirror`` and the ``amsrepomirror`` command.

Importing Luigi reads every luigi.cfg, so a file that does not parse fails that import: it becomes
one usage error here, before the command-line package (which imports Luigi) is loaded.

``amsrepomirror --version`` is answered before any of that: it needs nothing but the version, and a
check in a script or a module file should not pay a third of a second of imports for it.
"""

import sys

from amsrepomirror import __version__


def run() -> int:
    if sys.argv[1:2] == ["--version"]:
        return print_version()
    return run_command()


def print_version() -> int:
    """What the parser's ``--version`` prints, and where, without importing the parser: argparse stops at that
    option (nothing after it is read), writes to stderr when stdout is closed, and ignores a failed write."""
    stream = sys.stdout or sys.stderr
    try:
        stream.write(f"amsrepomirror {__version__}\n")
        stream.flush()
    except OSError:  # a reader gone (| head -0) or a full disk: as argparse, exit 0 all the same,
        sys.stdout = None  # with nothing left for the interpreter's last flush to fail on
    return 0


def run_command() -> int:
    # Here, not at the top: --version (above) needs none of this.
    import configparser  # see above

    from amsrepomirror.errors import INTERRUPTED, INTERRUPTED_LINE, settings_file_error  # see above

    try:
        # Imported here: importing it imports Luigi, which parses every luigi.cfg (see above).
        from amsrepomirror.cli import main, reader_gone
    except configparser.Error as exc:
        error = settings_file_error(exc)
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:  # Ctrl-C while starting: one line, as later
        print(INTERRUPTED_LINE, file=sys.stderr)
        return INTERRUPTED
    try:
        code = main()
        if sys.stdout is not None:  # None: started with stdout closed (>&-); print() then writes nothing
            sys.stdout.flush()  # here, not at exit, so that a reader gone away is an exit code and not a traceback
    except KeyboardInterrupt:  # before the command's own handling began
        print(INTERRUPTED_LINE, file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        return reader_gone()
    return code


if __name__ == "__main__":
    sys.exit(run())
