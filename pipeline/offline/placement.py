"""Staging and atomic placement of the repository tree inside ``$AMSHOME``.

Invariant: ``$AMSHOME/repository`` is at every instant either the old tree (or absent, on a first
install) or the complete, verified new tree -- never a mix -- whenever the process is killed,
and :func:`recover` (run at the start of every unpack) brings AMSHOME back to a clean state.

Names, all directly inside AMSHOME (one filesystem, so renames are atomic):

``R``  ``repository``                the live tree AMS reads
``P``  ``repository.previous``       the old tree after a swap (kept only with keep_previous)
``S``  ``.repository.staging``       the new tree being built, then verified, then swapped in
``T``  ``.repository.trash-*``       a tree being deleted (renamed here first, then removed)
``J``  ``.amsrepomirror-swap.json``  swap journal: (st_dev, st_ino) of the verified S,
                                     keep_previous, and the receipt to write afterwards
``C``  ``.amsrepomirror-receipt.json`` receipt: which bundle manifest R holds, and the installed
                                     tree (path, size, sha256, and mtime and inode after the swap)
``L``  ``.amsrepomirror.lock``      flock held by the running unpack (:func:`amshome_lock`)

No link planted at one of these names is ever followed: J and C are written to a fresh temp file
renamed over the name and read with O_NOFOLLOW; L is opened O_NOFOLLOW (a link there is refused);
S, T and write probes are made with mkdir/mkstemp, which never reuse an existing name. A failed
unpack removes its S at once unless the swap has begun (J exists); after a kill, recover() does.

State machine of :func:`swap_into_place` (each arrow is one atomic rename or write)::

    0  R=old  S=new (verified)          [P=older from keep_previous: moved to T and removed]
    1  write J(new inode)                -- "S is verified, swap intended"
    2a renameat2(S, R, RENAME_EXCHANGE)  R=new S=old   (Linux, atomic: R never missing)
    3a rename(S, P)                      R=new P=old
       -- or, when the exchange is unavailable (not Linux, old glibc, EINVAL on this fs) --
    2b rename(R, P)                      R missing, P=old, S=new   (the only window without R)
    3b rename(S, R)                      R=new P=old
       -- or, first install (no R) --
    2c rename(S, R)                      R=new
    4  unless keep_previous: rename(P, T), remove T
    5  write C from J (or remove the now stale C when no receipt was given)
    6  remove J

:func:`recover` decides from J alone, comparing inodes (an inode identifies a live directory):

* J present and ``ino(R) == J.new``: the swap happened -> finish it: the old tree (at S after
  2a, or at P) goes to P (keep_previous) or is removed; write/remove C (step 5); remove J.
* J present, R missing: killed between 2b and 3b -> roll back: rename(P, R); S is stale.
* J present, R is not the new tree: the swap did not happen -> S is stale, C still right.
* No J, R missing, P present (defensive) -> rename(P, R).
* Always: remove T*, temp files of J/C and write probes left by a kill, stale S (and
  ``.repository.staging*``), then J; fsync AMSHOME. L is never removed.

A rerun after recover() starts a fresh staging tree, so a kill anywhere "completes" by redoing
the unpack (or finds the receipt in place when the kill came after step 5).

Test seams (the only ones, both in :func:`checkpoint`, which names each step above; install.py
names its own): when ``AMSREPOMIRROR_KILL_AT`` holds a step's name, the process kills itself with
SIGKILL there (the crash tests run the real ``amsrepomirror unpack`` with it); when
``AMSREPOMIRROR_STOP_AT`` names it (comma-separated, several steps), the process stops itself with
SIGSTOP there until SIGCONT, so a test can change the bundle at that instant (the race tests of a
signed manifest swapped after its check). Nothing else sets either.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import glob
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from amsrepomirror.bundle.receipt import RECEIPT_SCHEMAS, InstalledFile, make_receipt
from amsrepomirror.errors import IntegrityError, UsageError
from amsrepomirror.offline.extract import open_regular
from amsrepomirror.util.fsutil import (
    atomic_write_json,
    exclusive_lock,
    fsync_dir,
    remove_entry,
    require_free_space,
    why_unwritable,
)
from amsrepomirror.util.jsonread import LIMITS, parse_json

REPOSITORY = "repository"
PREVIOUS = "repository.previous"
STAGING = ".repository.staging"
TRASH_PREFIX = ".repository.trash-"
JOURNAL = ".amsrepomirror-swap.json"
RECEIPT = ".amsrepomirror-receipt.json"
PROBE_PREFIX = ".amsrepomirror-probe-"
LOCK = ".amsrepomirror.lock"
JOURNAL_SCHEMA = "amsrepomirror/swap-journal/1"

DEFAULT_VERSION_PATTERN = r"AMS\d{4}\.\d+"

AT_FDCWD = -100
RENAME_EXCHANGE = 1 << 1


KILL_AT_ENV = "AMSREPOMIRROR_KILL_AT"
STOP_AT_ENV = "AMSREPOMIRROR_STOP_AT"


def checkpoint(name: str) -> None:
    """A named step of the unpack; the crash tests' kill point and the race tests' stop point
    (see the module docstring)."""
    if os.environ.get(KILL_AT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    if name in os.environ.get(STOP_AT_ENV, "").split(","):
        os.kill(os.getpid(), signal.SIGSTOP)


# --------------------------------------------------------------------------------------------
# low-level helpers


def _exists(path: Path) -> bool:
    try:
        os.lstat(path)
        return True
    except FileNotFoundError:
        return False


def _read_state(path: Path, kind: str):
    """Parse our JSON file ``path`` in AMSHOME; None when there is none.

    Opened without following a symlink or blocking on a fifo planted at its name (IntegrityError);
    ValueError when it is not JSON.
    """
    if not _exists(path):
        return None
    with open(open_regular(path), "rb") as f:
        return parse_json(f.read(LIMITS[kind] + 1), kind)


def _remove_tree(amshome: Path, path: Path) -> None:
    """Remove a tree by renaming it to a trash name first, so a kill leaves only T* behind."""
    if not _exists(path):
        return
    trash = Path(tempfile.mkdtemp(prefix=TRASH_PREFIX, dir=amshome))
    os.rename(path, trash / "t")  # rename into the fresh trash dir: atomic, one fs
    fsync_dir(amshome)
    shutil.rmtree(trash)


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return None  # glibc < 2.28 or another libc without the wrapper
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


def exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with renameat2(RENAME_EXCHANGE).

    Returns False (nothing changed) when the exchange is not available here; raises OSError
    on other failures.
    """
    fn = _renameat2
    if fn is None:
        return False
    rc = fn(AT_FDCWD, os.fsencode(str(a)), AT_FDCWD, os.fsencode(str(b)), RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _ident(path: Path):
    st = os.lstat(path)
    return [st.st_dev, st.st_ino]


# --------------------------------------------------------------------------------------------
# AMSHOME checks


def refuse_repository_folder(amshome) -> None:
    """UsageError when the folder given as AMSHOME is the ``repository`` of an AMSHOME that holds a
    receipt (an easy slip from inside it, ``--amshome .``): the unpack would place a second tree, its
    lock, log and receipt inside the installed one, and the scrub would lock and report there."""
    given = Path(os.path.abspath(amshome))
    for path in (given, *given.parents):  # also a folder below it (--amshome $AMSHOME/repository/linux)
        if path.name == REPOSITORY and os.path.lexists(path.parent / RECEIPT):  # guard: amshome-not-its-repository
            raise UsageError(f"AMSHOME {given} is {'' if path == given else 'inside '}the repository folder of the "
                             f"AMSHOME {path.parent} (it holds {RECEIPT}); nothing was changed: give --amshome "
                             f"{path.parent}")


def refuse_bundle_in_tree(bundle_dir: Path, home: Path) -> None:
    """UsageError when the bundle folder lies inside ``$AMSHOME/repository`` (or its staging): the
    tree it replaces would take the bundle with it when it is removed after the swap."""
    bundle = Path(os.path.realpath(bundle_dir))
    for tree in (home / REPOSITORY, home / STAGING):
        inside = Path(os.path.realpath(tree))
        if bundle == inside or inside in bundle.parents:
            raise UsageError(f"bundle {bundle_dir} is inside {tree}, which unpack replaces (and then removes); "
                             f"nothing was changed: move the bundle folder out of it, e.g. to {home / 'bundles'}")


def check_amshome(amshome) -> Path:
    """AMSHOME must exist, be a directory and be writable (probed); UsageError otherwise."""
    if amshome is None or str(amshome) == "":
        raise UsageError("AMSHOME is not set; pass --amshome or set AMSHOME")
    path = Path(amshome).absolute()
    if not path.exists():
        raise UsageError(f"AMSHOME {path} does not exist; install AMS first or point AMSHOME at it")
    if not path.is_dir():
        raise UsageError(f"AMSHOME {path} is not a directory")
    refuse_repository_folder(path)
    why = why_unwritable(path, PROBE_PREFIX)
    if why:
        raise UsageError(f"cannot write to AMSHOME: {why}")
    return path


def installed_version(amshome, candidates: Sequence[str], pattern: str = DEFAULT_VERSION_PATTERN) -> str | None:
    """The installed AMS version read from the first KB of candidate files, or None.

    ``candidates`` are paths or globs relative to AMSHOME (from configuration), tried in order.
    """
    home = Path(amshome)
    rx = re.compile(pattern)
    for cand in candidates:
        for name in sorted(glob.glob(os.path.join(glob.escape(str(home)), cand))):
            try:
                if not os.path.isfile(name):
                    continue
                with open(name, "rb") as f:
                    head = f.read(1024).decode("utf-8", errors="replace")
            except OSError:
                continue
            m = rx.search(head)
            if m:
                return m.group(0)
    return None


def check_version(bundle_versions, amshome, candidates: Sequence[str],
                  pattern: str = DEFAULT_VERSION_PATTERN) -> str:
    """Compare the bundle's AMS version (or the list of versions it holds) with the installed one;
    UsageError when the bundle does not hold the installed version.

    Returns a one-line message for the log (matched, or could not be read and not checked).
    """
    held = [bundle_versions] if isinstance(bundle_versions, str) else list(bundle_versions)
    found = installed_version(amshome, candidates, pattern)
    if found is None:
        looked = ", ".join(candidates) if candidates else "no candidate files configured"
        return f"could not read the installed AMS version from AMSHOME (looked at {looked}); not checked"
    if found.upper() not in {v.upper() for v in held}:
        raise UsageError(f"bundle is for {' and '.join(held)} but AMSHOME {amshome} has {found} installed; "
                         f"use a bundle built for {found}")
    return f"installed AMS version {found} matches"


def staging_dir(amshome) -> Path:
    """Where the new tree is built: inside AMSHOME, so the swap is a same-filesystem rename."""
    return Path(amshome).absolute() / STAGING


@contextlib.contextmanager
def new_staging(amshome):
    """Create the (empty) staging folder; remove it again when the block fails before the swap
    has begun. From the swap journal on, :func:`recover` decides, as after a kill."""
    home = Path(amshome).absolute()
    staging = staging_dir(home)
    os.mkdir(staging, 0o755)  # never through a link: recover() has just removed any old staging
    try:
        yield staging
    except BaseException:
        if not _exists(home / JOURNAL):
            with contextlib.suppress(OSError):  # else the next run's recover() removes it
                _remove_tree(home, staging)
        raise


def require_space(amshome, needed: int) -> None:
    """DiskSpaceError (exit 5) unless ``needed`` bytes are free on AMSHOME's filesystem."""
    require_free_space(Path(amshome), int(needed), "unpacking the repository into AMSHOME")


# --------------------------------------------------------------------------------------------
# receipt


def installed_files(tree_dir, files: Iterable) -> list[InstalledFile]:
    """``files`` (path, size, sha256) with the mtime and inode they have in ``tree_dir`` now; a
    directory rename keeps both, so taken in staging they hold after the swap."""
    rows = []
    for f in files:
        st = os.lstat(Path(tree_dir).joinpath(*f.path.split("/")))
        rows.append(InstalledFile(f.path, f.size, f.sha256, st.st_mtime_ns, st.st_ino))
    return rows


def write_receipt(amshome, manifest_sha256: str, version: str, bundle_path) -> dict[str, object]:
    """Record (atomically) which bundle manifest ``$AMSHOME/repository`` now holds."""
    receipt = make_receipt(manifest_sha256, version, bundle_path)
    atomic_write_json(Path(amshome) / RECEIPT, receipt)
    return receipt


def read_receipt(amshome) -> dict[str, object] | None:
    """The receipt, or None when there is none; IntegrityError when it is unreadable."""
    path = Path(amshome) / RECEIPT
    try:
        body = _read_state(path, "receipt")
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"cannot read receipt {path}: {exc}") from None
    if body is None:
        return None
    if not isinstance(body, dict) or body.get("schema") not in RECEIPT_SCHEMAS or "manifest_sha256" not in body:
        raise IntegrityError(f"{path} is not an amsrepomirror receipt")
    return body


def _remove_receipt(home: Path) -> None:
    try:
        os.unlink(home / RECEIPT)
    except FileNotFoundError:
        pass


# --------------------------------------------------------------------------------------------
# swap and recovery


def _read_journal(home: Path) -> dict | None:
    try:
        body = _read_state(home / JOURNAL, "swap journal")
        if body is None or (isinstance(body, dict) and body.get("schema") == JOURNAL_SCHEMA):
            return body
    except (OSError, ValueError, IntegrityError):
        pass
    return {}  # unreadable: atomic writes make this impossible short of tampering; treat as empty


def _finish(home: Path, journal: dict) -> None:
    """Steps 3a/4/5/6 after the new tree is live at R (idempotent)."""
    repo, prev = home / REPOSITORY, home / PREVIOUS
    keep = bool(journal.get("keep_previous"))
    staging = home / journal.get("staging", STAGING)
    if _exists(staging) and _ident(staging) != _ident(repo):
        # exchanged but not yet renamed: staging holds the old tree
        if keep:
            _remove_tree(home, prev)
            os.rename(staging, prev)
            fsync_dir(home)
            checkpoint("swap:old-to-previous")
        else:
            _remove_tree(home, staging)
    if not keep:
        _remove_tree(home, prev)
    checkpoint("swap:old-handled")
    receipt = journal.get("receipt")
    if receipt:
        atomic_write_json(home / RECEIPT, receipt)
    else:
        _remove_receipt(home)
    fsync_dir(home)
    checkpoint("swap:receipt")
    os.unlink(home / JOURNAL)
    fsync_dir(home)
    checkpoint("swap:journal-removed")


def swap_into_place(amshome, staging, keep_previous: bool = False,
                    receipt: dict[str, object] | None = None) -> str:
    """Make the verified tree at ``staging`` become ``$AMSHOME/repository``.

    Uses renameat2(RENAME_EXCHANGE) when available, else two renames (see the module docstring).
    The old tree ends as ``repository.previous`` when ``keep_previous``, else it is removed.
    ``receipt`` (from :func:`make_receipt`) is written as part of the swap (so recover() can
    finish it); without it the old receipt is removed at the swap and the caller writes the new
    one with :func:`write_receipt`. Returns "exchange", "rename" or "first-install".
    """
    home = Path(amshome).absolute()
    staging = Path(staging).absolute()
    repo, prev = home / REPOSITORY, home / PREVIOUS
    if staging.parent != home:
        raise UsageError(f"staging {staging} must be directly inside AMSHOME {home}")
    st = os.lstat(staging)
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"staging {staging} is not a directory")
    if st.st_dev != os.stat(home).st_dev:
        raise UsageError(f"staging {staging} is not on the same filesystem as AMSHOME {home}")
    recover(home, keep_staging=staging.name)
    checkpoint("swap:begin")
    if _exists(repo):
        _remove_tree(home, prev)  # an older kept tree: we are about to make a new previous
    atomic_write_json(home / JOURNAL, {"schema": JOURNAL_SCHEMA, "new": _ident(staging),
                                       "staging": staging.name, "keep_previous": bool(keep_previous),
                                       "receipt": receipt})
    fsync_dir(home)
    checkpoint("swap:journal-written")
    if not _exists(repo):
        os.rename(staging, repo)
        how = "first-install"
    elif exchange(staging, repo):
        how = "exchange"
        fsync_dir(home)
        checkpoint("swap:exchanged")
        os.rename(staging, prev)
    else:
        how = "rename"
        os.rename(repo, prev)
        fsync_dir(home)
        checkpoint("swap:old-renamed")
        os.rename(staging, repo)
    fsync_dir(home)
    checkpoint("swap:new-in-place")
    _finish(home, {"keep_previous": keep_previous, "receipt": receipt, "staging": staging.name})
    return how


def _debris(name: str) -> bool:
    """A name in AMSHOME that only a killed run leaves: trash, a write probe, a temp file of J or C."""
    temp = name.endswith(".tmp") and any(name.startswith(f".{n}.") for n in (JOURNAL, RECEIPT))
    return name.startswith(TRASH_PREFIX) or name.startswith(PROBE_PREFIX) or temp


def _is_staging(name: str) -> bool:
    return name == STAGING or name.startswith(STAGING + ".")


def interrupted(amshome) -> bool:
    """Whether a killed unpack left something in AMSHOME that :func:`recover` acts on (a journal,
    a staging tree, trash): then no run may skip recovery, even when the receipt is right."""
    try:
        names = os.listdir(amshome)
    except OSError:
        return False  # no AMSHOME, or not readable: the unpack itself says what is wrong
    return any(name == JOURNAL or _debris(name) or _is_staging(name) for name in names)


def recover(amshome, keep_staging: str | None = None) -> list[str]:
    """Bring AMSHOME to a consistent state after a kill (see the module docstring).

    Returns a list of one-line descriptions of what was done (empty when nothing was needed).
    ``keep_staging`` names a staging dir not to remove (used by swap_into_place itself).
    """
    home = Path(amshome).absolute()
    repo, prev = home / REPOSITORY, home / PREVIOUS
    actions: list[str] = []
    for name in sorted(os.listdir(home)):
        if _debris(name):
            remove_entry(home / name)
            actions.append(f"removed leftover {name}")
    journal = _read_journal(home)
    if journal is not None:
        checkpoint("recover:journal-found")
        new = journal.get("new")
        if _exists(repo) and new is not None and _ident(repo) == list(new):
            _finish(home, journal)
            actions.append("completed an interrupted swap: the new repository is in place")
        else:
            if not _exists(repo) and _exists(prev):
                os.rename(prev, repo)
                fsync_dir(home)
                actions.append(f"interrupted swap rolled back: restored {REPOSITORY} from {PREVIOUS}")
            elif new is None:
                _remove_receipt(home)  # unreadable journal: we cannot vouch for the receipt any more
                actions.append("unreadable swap journal: removed the receipt")
            else:
                actions.append("interrupted swap had not started: the old repository is untouched")
            os.unlink(home / JOURNAL)
            fsync_dir(home)
    elif not _exists(repo) and _exists(prev):
        os.rename(prev, repo)
        fsync_dir(home)
        actions.append(f"restored {REPOSITORY} from {PREVIOUS}")
    for name in sorted(os.listdir(home)):
        if name != keep_staging and _is_staging(name):
            remove_entry(home / name)
            actions.append(f"removed stale staging {name}")
    if actions:
        fsync_dir(home)
    return actions


@contextlib.contextmanager
def amshome_lock(amshome, shared: bool = False):
    """Hold an exclusive advisory lock on AMSHOME for the whole unpack (recover .. receipt).

    Two unpacks into one AMSHOME would remove each other's staging; the second one gets a
    UsageError instead. The lock file ``.amsrepomirror.lock`` stays (it is never inside the tree).
    ``shared``: for readers of the tree and its receipt (the scrub), which only exclude an unpack.
    """
    lock = Path(amshome) / LOCK
    if os.path.islink(lock):  # the lock is opened O_NOFOLLOW; say why instead of "too many links"
        raise UsageError(f"{lock} is a symlink; remove it (amsrepomirror never writes through links in AMSHOME)")
    busy = f"another amsrepomirror unpack is running in AMSHOME {amshome}, or a verify --installed"
    with exclusive_lock(lock, busy, shared=shared) as path:
        yield path


def usage_hint(amshome, version: str) -> str:
    """What AMS's package manager needs to find the placed repository."""
    repo = Path(amshome).absolute() / REPOSITORY
    index = repo / f"{version}.yml"
    return (
        f"The {version} package repository is at {repo}.\n"
        f"amspackages finds {index} automatically ($AMSHOME/repository/<VERSION>.yml).\n"
        f"If your AMS installation does not detect it, set:\n"
        f"  export SCM_AMSPKGS_REPO={index}"
    )
