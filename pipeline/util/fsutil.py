"""Small filesystem helpers: atomic writes and free-space checks."""

import contextlib
import ctypes
import errno
import json
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

from amsrepomirror.errors import DiskSpaceError, LockHeld, MirrorError
from amsrepomirror.util.units import format_size

#: The descriptors of the locks this process holds (run_lock, exclusive_lock).
_HELD_LOCKS: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a forked child (Luigi's task processes): close the copies of the parent's lock descriptors. A
    flock belongs to the open file, which a fork shares: a child that outlived its killed parent would
    otherwise keep the mirror locked, and the next run would find it "held" with nobody working."""
    for fd in _HELD_LOCKS:
        with contextlib.suppress(OSError):
            os.close(fd)  # guard: lock-not-inherited
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either the old file or the complete new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide manifests and sums from other admins
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_new_bytes(path: Path, data: bytes) -> bool:
    """Write ``path`` complete and at once, only when it does not exist yet: False (and nothing
    written) when another writer was first. A hard link never replaces, unlike a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def json_bytes(obj) -> bytes:
    """The project's JSON layout for state files (indented, keys sorted, a final newline)."""
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def replace_without_sync(path: str, data: bytes) -> None:
    """Write ``data`` so that ``path`` is either the old file or the complete new one, like
    :func:`atomic_write_bytes` but not durably (the caller makes a group durable at once, see
    :func:`make_durable`) and with the fewest system calls: thousands are written per run."""
    tmp = f"{path}.{os.getpid()}-{threading.get_ident()}.tmp"  # one writer per name at a time
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        fd = os.open(tmp, flags, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(tmp, flags, 0o644)
    try:
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class NotReadable(OSError):
    """A file that ``read_bounded`` will not read: not a regular file, or larger than it may be."""


def read_bounded(path: Path, limit: int) -> bytes:
    """A regular file's bytes, whole, when it holds at most ``limit`` of them: what a hostile bundle
    names manifest.json or its .sig may be a link to /dev/zero or a FIFO, or very large."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not hold up the open
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotReadable(f"{path} is not a regular file")
        if hasattr(os, "O_NONBLOCK"):
            os.set_blocking(fd, True)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise NotReadable(f"{path} is larger than {limit} bytes")
    return data


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def require_free_space(path: Path, needed: int, what: str) -> None:
    """Fail early, before writing anything, when ``needed`` bytes will not fit at ``path``."""
    free = free_bytes(path)
    if needed > free:
        raise DiskSpaceError(
            f"not enough disk space for {what} at {path}: need {format_size(needed)}, "
            f"{format_size(free)} free"
        )


def fsync_dir(path: Path) -> None:
    """Persist a folder's entries (renames into it) where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _libc(name: str, argtypes: tuple | None = None):
    """A function of the C library (Linux's syncfs(2), sync_file_range(2)), or None where there is none."""
    try:
        call = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError, TypeError):
        return None
    if argtypes is not None:
        call.argtypes = argtypes
    return call


_SYNCFS = _libc("syncfs")


_SYNC_FILE_RANGE = _libc("sync_file_range", (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint))
SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` at ``offset`` of ``fd`` to disk now, without waiting
    (Linux; elsewhere nothing): what is written early need not be written by the fsync that makes the
    file durable, which then takes less time at the end of its download. A hint only: durability
    still comes from that fsync."""
    if _SYNC_FILE_RANGE is not None and nbytes > 0 and fd >= 0:
        _SYNC_FILE_RANGE(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE)


def make_durable(files: Iterable[Path], folders: Iterable[Path] = ()) -> None:
    """Make the written ``files`` and the entries of ``folders`` durable, at least as strongly as an
    fsync of each would.

    Where Linux's syncfs exists, one call per filesystem holding them flushes it whole (one journal
    commit and one cache flush for a group of small files, instead of one per file); elsewhere, or
    when it fails, each file and folder is fsynced.
    """
    files = [Path(f) for f in files]
    folders = {Path(f) for f in folders} | {f.parent for f in files}
    if not folders:
        return
    if _SYNCFS is not None and _sync_filesystems(folders):
        return
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in folders:
        fsync_dir(folder)


def _sync_filesystems(folders) -> bool:
    """syncfs once per filesystem holding one of ``folders``; False if any could not be synced."""
    synced = set()
    for folder in folders:
        try:
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:
            return False
        try:
            device = os.fstat(fd).st_dev
            if device not in synced:
                if _SYNCFS(fd) != 0:
                    return False
                synced.add(device)
        finally:
            os.close(fd)
    return True


def remove_entry(path: Path) -> None:
    """Remove a tree or a single entry without following symlinks; missing is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def why_unwritable(folder: Path, probe_prefix: str = ".amsrepomirror-probe-") -> str | None:
    """Why no file can be created in ``folder`` (or, when it does not exist yet, in its nearest
    existing parent), in words naming the real cause; None when one can (a file is made and removed)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=probe_prefix, dir=folder)
    except OSError as exc:
        if exc.errno == errno.EROFS:
            return f"{folder} is on a read-only file system: mount it read-write or choose another folder"
        if exc.errno in (errno.EACCES, errno.EPERM) and os.name == "posix" and os.geteuid() == 0:
            return (f"{folder} refuses writes even to root ({exc.strerror}): an immutable attribute, a root-squashed "
                    "NFS export or a security policy")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return (f"{folder} is not writable by this user ({exc.strerror}): fix its permissions or run as a user "
                    "who may write there")
        return f"cannot create a file in {folder}: {exc.strerror or exc}"
    os.close(fd)
    os.unlink(probe)
    return None


@contextlib.contextmanager
def local_writes(what: str):
    """Turn a local disk error into the project's errors: a full disk or quota is exit 5."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise DiskSpaceError(f"disk full while writing {what}: {exc.strerror}") from None
        raise MirrorError(f"cannot write {what}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def run_lock(folder: Path, run: str, busy: str):
    """Share ``folder`` with the processes of the same ``run`` only: each holds a shared lock on
    ``folder/<run>.lock``; a newcomer, holding ``folder/gate`` meanwhile, first checks that no other
    run's lock is held. LockHeld(``busy``) if one is. Without fcntl (Windows) nothing is locked."""
    try:
        import fcntl  # platform: exists on POSIX only
    except ImportError:
        yield folder
        return
    folder.mkdir(parents=True, exist_ok=True)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    gate, own = os.open(folder / "gate", flags, 0o644), None
    try:
        fcntl.flock(gate, fcntl.LOCK_EX)  # held for a moment by each newcomer
        # Opened under the gate: a lock file nobody holds is one no newcomer is about to take, so it
        # can be removed below without leaving someone locking a file that is gone.
        own = os.open(folder / f"{run}.lock", flags, 0o644)
        for other in folder.glob("*.lock"):
            if other.name == f"{run}.lock":
                continue
            fd = os.open(other, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise LockHeld(f"{busy} (run {other.stem}); wait for it to finish") from None
            finally:
                os.close(fd)
            other.unlink(missing_ok=True)  # a run nobody works on any more
        fcntl.flock(own, fcntl.LOCK_SH)
        fcntl.flock(gate, fcntl.LOCK_UN)
        _HELD_LOCKS.add(own)
        yield folder
    finally:
        os.close(gate)
        if own is not None:
            _HELD_LOCKS.discard(own)
            os.close(own)


@contextlib.contextmanager
def exclusive_lock(path: Path, busy: str, shared: bool = False):
    """Hold an advisory lock on ``path`` (created if needed); LockHeld(``busy``) if another process has it.

    ``shared``: many holders at once (processes coordinated by a central scheduler), none beside an
    exclusive holder. On Windows (msvcrt has no shared locks) a shared lock locks nothing.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        try:
            if os.name == "nt":
                import msvcrt  # platform: exists on Windows only
                if not shared:  # msvcrt has no shared locks
                    msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            else:
                import fcntl  # platform: exists on POSIX only
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES, errno.EDEADLK):
                raise LockHeld(f"{busy} (lock {path} is held); wait for it to finish") from None
            raise
        _HELD_LOCKS.add(fd)
        yield path
    finally:
        _HELD_LOCKS.discard(fd)
        os.close(fd)  # releases the lock
