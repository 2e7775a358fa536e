"""``python -m amsrepomirror`` and the ``amsrepomirror`` command.

Importing Luigi reads every luigi.cfg, so a file that does not parse fails that import: it becomes
one usage error here, before the command-line package (which imports Luigi) is loaded.
"""

import configparser
import sys

from amsrepomirror.errors import INTERRUPTED, INTERRUPTED_LINE, settings_file_error


def run() -> int:
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
