"""Print pip constraints that pin every direct dependency of pyproject.toml to its declared floor.

``.ci/run`` installs the package with these (``pip install -c``) in a venv of its own and runs the fast
tier there, so a floor that does not work fails CI. A dependency without a ``>=`` floor is an error: every
declared minimum must be one that was tested.
"""

import re
import sys
from pathlib import Path

import tomllib

FLOOR = re.compile(r">=\s*([0-9][0-9A-Za-z.+!-]*)")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def floors(pyproject: Path) -> list[str]:
    """``name==floor`` for each entry of [project] dependencies (markers and extras are not used there)."""
    pins = []
    for requirement in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        name, floor = NAME.match(requirement), FLOOR.search(requirement)
        if not name or not floor:
            raise SystemExit(f"error: {pyproject}: dependency {requirement!r} declares no minimum (name>=X.Y)")
        pins.append(f"{name.group(0)}=={floor.group(1)}")
    return pins


if __name__ == "__main__":
    print("\n".join(floors(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
