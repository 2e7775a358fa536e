"""The one path check, and the strict names: every path that comes from outside (listing,
manifest, archive member, tree on disk) and every version or chunk name passes here."""

import posixpath
import re
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

#: An AMS version as bundles carry it: AMS, then digits and dots (AMS2026.1).
VERSION_PATTERN = re.compile(r"AMS[0-9]+(?:\.[0-9]+)*")
#: Names holding this, at any level of a tree, are the tool's own temporary files, never content.
RESERVED_PREFIX = ".amsrepomirror-"
#: The mirror's own state folder, at the top of the mirror folder: never a listed path.
STATE_DIR = ".amsrepomirror"
#: Windows and macOS (by default) fold case: two paths that differ only in case are one file there.
CASE_INSENSITIVE = sys.platform in ("win32", "cygwin", "darwin")


def printable(text: str) -> str:
    """``text`` as it may appear in a one-line message: as it is when printable, else escaped."""
    return text if text.isprintable() else repr(text)


def path_problem(name) -> str | None:
    """Why ``name`` is not an acceptable relative path in a bundle or a placed tree, or None.

    The one path check: listing paths, manifest paths, archive members, the tree on disk.
    UTF-8 names are fine; control and format characters, line separators, backslashes, absolute
    paths, drive letters, ``.``/``..``/empty segments and our reserved names are not. The reserved
    names (the state folder at the top, the reserved prefix anywhere) are compared as a
    case-insensitive filesystem would (:func:`folded`) on every system: a tree may be copied to one.
    """
    if not isinstance(name, str):
        return "not a string"
    if not name:
        return "empty name"
    if "\x00" in name:
        return "NUL byte in name"
    if not (name.isascii() and name.isprintable()):  # printable ASCII holds no control or format character
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
    for depth, seg in enumerate(name.split("/")):
        if seg == "":
            return "empty path segment"
        if seg in (".", ".."):  # guard: member-path-check
            return f"'{seg}' path segment"
        if RESERVED_PREFIX in folded(seg):  # guard: path-rule-reserved-prefix
            return f"reserved name {seg!r}"
        if depth == 0 and folded(seg).rstrip(". ") == STATE_DIR:  # guard: path-rule-state-folder
            return f"the mirror's own state folder {STATE_DIR}/ (as {seg!r})"
    return None


def folded(name: str) -> str:
    """``name`` as a case- and normalisation-insensitive filesystem compares it (NTFS, APFS, HFS+,
    FAT): two names with the same folded form may be one file there. Folds a little more than any
    one of them (``ß`` as ``ss``, ``ſ`` as ``s``), which errs on the side of refusing."""
    if name.isascii():
        return name.lower()  # the same, sooner: a listing has 100,000 names
    return unicodedata.normalize("NFC", unicodedata.normalize("NFD", name).upper().casefold())


@dataclass
class TreePathCheck:
    """What :func:`tree_path_problems` found: ``problems`` refuse the tree, ``warnings`` do not."""
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def tree_path_problems(paths: Iterable[str], case_insensitive: bool | None = None) -> TreePathCheck:
    """What a set of paths may be, as one tree: the one rule for a listing (online) and a bundle's
    manifest (offline).

    Each path must pass :func:`path_problem`; no name may be both a file and a folder; no two
    names (files or folders) may differ only in Unicode normalisation (NFC/NFD: one name on macOS,
    and a real listing never has both); names that differ only in case are refused where the
    filesystem folds case (``case_insensitive``) and otherwise kept with a warning, since such a
    tree cannot be unpacked onto a case-insensitive filesystem. ``case_insensitive``: None for
    this system's (:data:`CASE_INSENSITIVE`).
    """
    if case_insensitive is None:
        case_insensitive = CASE_INSENSITIVE
    check = TreePathCheck()
    files = set()
    for path in sorted(set(paths), key=repr):
        why = path_problem(path)
        if why:
            check.problems.append(f"unsafe path {path!r} ({why})")
        else:
            files.add(path)
    folders = {posixpath.dirname(p) for p in files} - {""}
    for folder in list(folders):
        while folder:
            folders.add(folder)
            folder = posixpath.dirname(folder)
    for clash in sorted(files & folders):
        check.problems.append(f"{clash!r} is named both as a file and as a folder")
    first = {}
    for name in sorted(files | folders):
        other = first.setdefault(folded(name), name)
        if other == name or posixpath.dirname(other) != posixpath.dirname(name):
            continue  # the same name, or a pair already found one level up
        pair = f"{other!r} and {name!r}"  # printable: both passed path_problem
        if unicodedata.normalize("NFC", other) == unicodedata.normalize("NFC", name):  # guard: path-rule-normalisation-pairs
            check.problems.append(f"{pair} differ only in Unicode normalisation (NFC/NFD): one name on macOS")
        elif case_insensitive:
            check.problems.append(f"{pair} differ only in case: one file on this case-insensitive system")
        else:
            check.warnings.append(f"{pair} differ only in case: this tree cannot be unpacked onto a "
                                  "case-insensitive filesystem (Windows, macOS)")
    return check




def is_plain_file_name(name: str) -> bool:
    """A plain file name inside the bundle folder (no folders, not hidden, printable)."""
    return (
        bool(name)
        and name not in (".", "..")
        and not name.startswith(".")
        and not any(c in name for c in "/\\\n\r\x00")
    )
