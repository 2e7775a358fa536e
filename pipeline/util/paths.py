"""The one path check, and the strict names: every path that comes from outside (listing,
manifest, archive member, tree on disk) and every version or chunk name passes here."""

import re
import unicodedata
from typing import Optional

#: An AMS version as bundles carry it: AMS, then digits and dots (AMS2026.1).
VERSION_PATTERN = re.compile(r"AMS[0-9]+(?:\.[0-9]+)*")
#: Names holding this, at any level of a tree, are the tool's own temporary files, never content.
RESERVED_PREFIX = ".amsrepomirror-"


def shown(text: str) -> str:
    """``text`` as it may appear in a one-line message: as it is when printable, else escaped."""
    return text if text.isprintable() else repr(text)


def path_problem(name) -> Optional[str]:
    """Why ``name`` is not an acceptable relative path in a bundle or a placed tree, or None.

    The one path check: listing paths, manifest paths, archive members, the tree on disk.
    UTF-8 names are fine; control and format characters, line separators, backslashes, absolute
    paths, drive letters, ``.``/``..``/empty segments and our reserved names are not.
    """
    if not isinstance(name, str):
        return "not a string"
    if not name:
        return "empty name"
    if "\x00" in name:
        return "NUL byte in name"
    for ch in name:
        kind = unicodedata.category(ch)
        if kind.startswith("C") or kind in ("Zl", "Zp"):
            return f"control character {ch!r} in name"
    if "\\" in name:
        return "backslash in name"
    if name.startswith("/"):
        return "absolute path"
    if re.match(r"^[A-Za-z]:", name):
        return "drive letter"
    for seg in name.split("/"):
        if seg == "":
            return "empty path segment"
        if seg in (".", ".."):
            return f"'{seg}' path segment"
        if RESERVED_PREFIX in seg:
            return f"reserved name {seg!r}"
    return None




def is_plain_file_name(name: str) -> bool:
    """A plain file name inside the bundle folder (no folders, not hidden, printable)."""
    return (
        bool(name)
        and name not in (".", "..")
        and not name.startswith(".")
        and not any(c in name for c in "/\\\n\r\x00")
    )
