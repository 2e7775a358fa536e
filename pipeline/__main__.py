"""``python -m amsrepomirror`` and the ``amsrepomirror`` command.

Importing Luigi reads every luigi.cfg, so a file that does not parse fails that import: it becomes
one usage error here, before the command-line package (which imports Luigi) is loaded.
"""

import configparser
import sys

from amsrepomirror.errors import settings_file_error


def run() -> int:
    try:
        # Imported here: importing it imports Luigi, which parses every luigi.cfg (see above).
        from amsrepomirror.cli import main
    except configparser.Error as exc:
        error = settings_file_error(exc)
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return main()


if __name__ == "__main__":
    sys.exit(run())
