"""The check ``tool/install.sh`` runs before any wheel runs: the requirements file for this Python
and every wheel it names must be files that manifest.json's ``tool`` list names, with that sha256.
Prints pip's wheel; otherwise one line and exit 4.

install.sh feeds this file's text to the chosen interpreter (``python -I -S -``: standard library
only, no site, no environment), before amsrepomirror is installed: it imports nothing of the package.
"""

import hashlib
import json
import os
import re
import stat
import sys

LIMIT = 1 << 30  # bytes: a wheel or manifest.json is far smaller; a device or a huge file is refused
REQUIREMENT = re.compile(r"(wheels/[A-Za-z0-9_.+-]+\.whl) --hash=sha256:([0-9a-f]{64})")


def refuse(why: str) -> None:
    sys.stderr.write("error: install.sh: " + why + "; nothing was installed\n")
    sys.exit(4)


def read(bundle: str, rel: str) -> bytes:
    """The bytes of regular file ``rel`` of the bundle, read once (no link followed, no FIFO waited on)."""
    path = os.path.join(bundle, *rel.split("/"))
    try:
        with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NONBLOCK | os.O_NOFOLLOW)) as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                refuse(rel + " is not a regular file")
            data = f.read(LIMIT + 1)
    except OSError as exc:
        refuse("cannot read " + rel + ": " + str(exc))
    if len(data) > LIMIT:
        refuse(rel + " is larger than " + str(LIMIT) + " bytes")
    return data


def listed_tool(bundle: str) -> dict:
    """manifest.json's ``tool`` list: {path: sha256}."""
    try:
        return {t["path"]: t["sha256"] for t in json.loads(read(bundle, "manifest.json"))["tool"]}
    except Exception as exc:
        refuse("manifest.json lists no tool files: " + type(exc).__name__)


def check(bundle: str, listed: dict, rel: str) -> bytes:
    """The bytes of ``rel`` when manifest.json lists it with their sha256; else refuse."""
    if rel not in listed:
        refuse(rel + " is not listed in manifest.json")
    data = read(bundle, rel)
    if hashlib.sha256(data).hexdigest() != listed[rel]:  # guard: tool-wheel-pinning
        refuse(rel + " does not match its sha256 in manifest.json")
    return data


def pip_wheel(bundle: str, requirements: str) -> str:
    """Check ``requirements`` and every wheel it names; return the path of its one pip wheel."""
    listed = listed_tool(bundle)
    pips = []
    for line in check(bundle, listed, requirements).decode("utf-8", "replace").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        found = REQUIREMENT.fullmatch(line)
        if not found or listed.get("tool/" + found.group(1)) != found.group(2):  # guard: tool-requirement-listed
            refuse(requirements + " names a wheel that manifest.json does not list: " + ascii(line[:120]))
        check(bundle, listed, "tool/" + found.group(1))
        if found.group(1).startswith("wheels/pip-"):
            pips.append(found.group(1))
    if len(pips) != 1:
        refuse(requirements + " names " + str(len(pips)) + " pip wheels, not one")
    return os.path.join(bundle, "tool", pips[0])


if __name__ == "__main__":
    print(pip_wheel(sys.argv[1], "tool/" + sys.argv[2]))
