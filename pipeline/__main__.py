"""``python -m amsrepomirror`` and the ``amsrepomirror`` command.

Importing Luigi reads every luigi.cfg, so a file that does not parse fails that import: it becomes
one usage error here, before the command-line package (which imports Luigi) is loaded.

``amsrepomirror --version`` is answered before any of that: it needs nothing but the version, and a
check in a script or a module file should not pay a third of a second of imports for it.
"""

import os
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


def read_at_import() -> list[str]:
    """The settings files read while the command-line package is imported: Luigi's (luigi.configuration),
    then every layer of the tool's (config.layers, when Luigi itself could be imported)."""
    files = ["/etc/luigi/client.cfg", "/etc/luigi/luigi.cfg", "client.cfg", "luigi.cfg", os.environ.get("LUIGI_CONFIG_PATH", "")]
    try:
        from amsrepomirror import config  # here: only after a start failed on a settings file
        return files + [path for _, path in config.layers() if path]
    except Exception:  # noqa: BLE001 -- Luigi's own file is the bad one: it is among those above
        return files


def run_command() -> int:
    # Here, not at the top: --version (above) needs none of this.
    import configparser  # see above

    from amsrepomirror.errors import exit_code_for, settings_file_error, settings_not_text, stop_line  # see above

    try:
        # Imported here: importing it imports Luigi, which parses every luigi.cfg (see above).
        from amsrepomirror.cli import main, reader_gone
    except (configparser.Error, UnicodeDecodeError) as exc:
        error = settings_file_error(exc) if isinstance(exc, configparser.Error) else settings_not_text(exc, read_at_import())
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt as exc:  # Ctrl-C while starting: one line, as later
        print(stop_line(exc), file=sys.stderr)
        return exit_code_for(exc)
    try:
        code = main()
        if sys.stdout is not None:  # None: started with stdout closed (>&-); print() then writes nothing
            sys.stdout.flush()  # here, not at exit, so that a reader gone away is an exit code and not a traceback
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (errors.Terminated), outside the command's own handling
        print(stop_line(exc), file=sys.stderr)
        return exit_code_for(exc)
    except BrokenPipeError:
        return reader_gone()
    return code


if __name__ == "__main__":
    sys.exit(run())
