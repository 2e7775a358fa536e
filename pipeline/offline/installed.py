"""Is the installed tree the one its receipt names? One answer per file
(:func:`installed_file_problem`), asked by a delta of every installed file it reuses and by the
scrub (``verify --installed``) of every file of the tree.

The receipt's sha256 decides. Size, mtime and inode as the receipt recorded them are only a fast
path, taken when the caller trusts them (``trust_metadata``); they prove nothing about the bytes
(bit rot keeps all three) and they change when AMSHOME is copied or restored (``cp -a``,
``rsync -a``: new inodes) although the bytes do not, so any mismatch is settled by hashing.
"""

import os
import shlex
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from amsrepomirror.bundle.receipt import InstalledFile, receipt_tree, receipt_version_paths
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.offline import placement
from amsrepomirror.offline.extract import open_regular
from amsrepomirror.util.hashing import sha256_fd
from amsrepomirror.util.paths import printable
from amsrepomirror.util.units import counted

#: (inode, size, mtime in ns) of a file as it was checked: a hard link made of it afterwards must show the same.
Identity = tuple[int, int, int]


def _identity(st: os.stat_result) -> Identity:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class FileCheck(NamedTuple):
    """What :func:`installed_file_problem` found: ``problem`` is empty when the file is the one the
    receipt names; ``identity`` is then the file's as checked."""
    problem: str
    identity: Identity | None = None


def installed_file_problem(path: Path, row: InstalledFile, *, trust_metadata: bool = False,
                           on_bytes: Callable[[int], None] | None = None) -> FileCheck:
    """Whether the file at ``path`` holds the bytes ``row`` of the receipt names.

    Missing, not a regular file, or another size: not it. Otherwise it is hashed (one read, through
    one descriptor, never following a link) and only its sha256 decides, unless ``trust_metadata``
    and its inode and mtime are still the receipt's (the fast path an admin chose)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return FileCheck("missing")
    except OSError as exc:
        return FileCheck(f"unreadable ({exc.strerror})")
    if not stat.S_ISREG(st.st_mode):
        return FileCheck("not a regular file")
    if st.st_size != row.size:
        return FileCheck(f"size {st.st_size}, the receipt says {row.size}")
    if trust_metadata and (st.st_ino, st.st_mtime_ns) == (row.ino, row.mtime_ns):
        return FileCheck("", _identity(st))
    try:
        fd = open_regular(path)
    except IntegrityError as exc:
        return FileCheck(f"unreadable ({exc})")
    try:
        before = os.fstat(fd)
        size, digest = sha256_fd(fd, on_bytes)
        after = os.fstat(fd)
    except OSError as exc:
        return FileCheck(f"unreadable ({exc.strerror})")
    finally:
        os.close(fd)
    if _identity(before) != _identity(after):
        return FileCheck("changed while it was read")
    if size != row.size or digest != row.sha256:  # guard: installed-reuse-hash
        return FileCheck("bytes other than the sha256 the receipt records (changed in place, or rotted on disk)")
    return FileCheck("", _identity(after))


class ScrubReport(NamedTuple):
    """How ``$AMSHOME/repository`` differs from its receipt (each a sorted list of lines)."""
    changed: list[str]
    missing: list[str]
    added: list[str]
    files: int
    bytes: int
    receipt: dict
    versions: tuple[str, ...] = ()  # the AMS versions the receipt says the tree holds

    @property
    def differences(self) -> list[str]:
        return self.changed + self.missing + self.added


def _unlisted(repo: Path, paths: Sequence[str]) -> list[str]:
    """Entries under ``repo`` the receipt does not name (files, links, special files, and
    directories that hold none of its files), never following a link."""
    want = set(paths)
    dirs = {p.rsplit("/", i)[0] for p in want for i in range(1, p.count("/") + 1)}
    added = []
    for dirpath, dirnames, filenames in os.walk(repo, followlinks=False):
        for name in sorted(dirnames + filenames):
            rel = (Path(dirpath) / name).relative_to(repo).as_posix()
            if rel in dirs and stat.S_ISDIR(os.lstat(Path(dirpath) / name).st_mode):
                continue
            if rel not in want:
                added.append(rel)
        dirnames[:] = [d for d in dirnames if (Path(dirpath) / d).relative_to(repo).as_posix() in dirs]
    return sorted(added)


def no_receipt(home: Path) -> UsageError:
    """The scrub's answer for a folder that holds no receipt (not an AMSHOME amsrepomirror filled)."""
    return UsageError(f"AMSHOME {home} has no receipt: nothing was unpacked there by amsrepomirror, "
                      "so there is nothing to check the tree against")


def scrub(home: Path, on_bytes: Callable[[int], None] | None = None,
          on_total: Callable[[int], None] | None = None) -> ScrubReport:
    """Re-hash ``$AMSHOME/repository`` against its receipt: every file the receipt names must hold
    its bytes (:func:`installed_file_problem`, never trusting size, mtime or inode) and nothing
    else may be there (``on_bytes``, ``on_total``: progress). UsageError without a receipt that
    lists the tree; IntegrityError when the receipt is damaged."""
    receipt = placement.read_receipt(home)
    if receipt is None:
        raise no_receipt(home)
    tree = receipt_tree(receipt, home / placement.RECEIPT)
    repo = home / placement.REPOSITORY
    if not repo.is_dir() or repo.is_symlink():
        raise IntegrityError(f"{repo} is missing or not a directory, but its receipt lists {counted(len(tree), 'file')}; "
                             "unpack a full bundle with --reinstall")
    if on_total is not None:
        on_total(sum(r.size for r in tree))
    changed, missing = [], []
    for row in sorted(tree, key=lambda r: r.path):
        check = installed_file_problem(repo.joinpath(*row.path.split("/")), row, on_bytes=on_bytes)
        if check.problem == "missing":
            missing.append(f"missing: {printable(row.path)}")
        elif check.problem:
            changed.append(f"changed: {printable(row.path)}: {check.problem}")
    added = [f"added: {printable(rel)}" for rel in _unlisted(repo, [r.path for r in tree])]
    held = receipt_version_paths(receipt, home / placement.RECEIPT, tree)
    versions = tuple(sorted(held)) if held else (str(receipt.get("version", "?")),)
    return ScrubReport(changed, missing, added, len(tree), sum(r.size for r in tree), receipt, versions)


def require_intact(home: Path, report: ScrubReport) -> None:
    """IntegrityError when the scrub found differences (the caller lists them)."""
    if report.differences:  # guard: installed-scrub
        raise IntegrityError(
            f"{home / placement.REPOSITORY} differs from its receipt: {len(report.changed)} changed, "
            f"{len(report.missing)} missing, {len(report.added)} added (listed above); to restore it run: "
            f"amsrepomirror unpack FULL_BUNDLE --amshome {shlex.quote(str(home))} --reinstall")
