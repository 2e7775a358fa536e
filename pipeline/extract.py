"""Hardened extraction of bundle chunks into a staging directory.

A chunk is untrusted input until proven otherwise, even though its SHA-256 is listed in the
bundle's SHA256SUMS: the bundle may have been tampered with or built by a buggy tool. So:

* :func:`check_members` reads only the archive's header and refuses, before anything is
  written, every member that is not a plain, safely named regular file listed in the chunk:
  absolute names, drive letters, backslashes, ``.``/``..``/empty segments, NUL bytes, names in
  our reserved ``.amsrepomirror-`` namespace, symlinks, junctions, sockets, device files and
  fifos, duplicates, members not in ``chunk.members`` and expected members that are missing.
  Directory entries are allowed only when they are a parent directory of an expected member
  (7-Zip writes such entries when it archives a folder); any other directory entry is refused.
  (The 7z format has no hard-link member type; a member with Unix mode bits of anything but a
  regular file or directory is refused as a special file.)
* :func:`extract_chunk` extracts into a private, freshly created temporary directory inside
  ``dest_dir`` (so a pre-existing symlink in ``dest_dir`` can never redirect a write), with
  py7zr's ``max_extract_size`` set to the expected total, then checks that exactly the expected
  regular files appeared with the expected size and SHA-256 (hashed as a stream, opened with
  ``O_NOFOLLOW``), and only then renames them into place. Every directory component on the
  way is checked with ``lstat`` and created by us; nothing ever follows a symlink in
  ``dest_dir``.
* :func:`reassemble` joins split files from their parts and is resumable.
* :func:`verify_tree` is the final gate: the tree equals the manifest, nothing more, nothing less.

Every problem with the content is an :class:`IntegrityError` (exit code 4); running out of disk
space is a :class:`DiskSpaceError` (exit code 5).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import py7zr
import py7zr.exceptions

from .bundle import BundleFile, Chunk
from .errors import DiskSpaceError, IntegrityError
from .fsutil import fsync_dir, remove_entry
from .hashing import BLOCK

#: Names starting with this, at any level of the tree, are ours (temporary files).
RESERVED_PREFIX = ".amsrepomirror-"
#: Per-chunk temporary extraction directories live under ``dest_dir/EXTRACT_TMP``.
EXTRACT_TMP = RESERVED_PREFIX + "extract"
#: Suffix of the temporary file a split file is reassembled into.
PARTIAL_SUFFIX = RESERVED_PREFIX + "partial"

FILE_MODE = 0o644
DIR_MODE = 0o755
MAX_LISTED = 5

Expected = Dict[str, Tuple[int, str]]


# --------------------------------------------------------------------------------------------
# helpers


def _no_space(exc: OSError) -> bool:
    return getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


def _os_error(exc: OSError, what: str) -> Exception:
    """Map an OSError to our exception types (ENOSPC -> DiskSpaceError)."""
    if _no_space(exc):
        return DiskSpaceError(f"not enough disk space while {what}: {exc}")
    return IntegrityError(f"{what} failed: {exc}")




def _hash_regular(path: Path, fsync: bool = False) -> Tuple[int, str]:
    """(size, sha256) of a regular file, never following a symlink; IntegrityError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IntegrityError(f"{path} is a symlink, expected a regular file") from exc
        raise IntegrityError(f"cannot open {path}: {exc}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IntegrityError(f"{path} is not a regular file")
        hasher = hashlib.sha256()
        size = 0
        while True:
            block = os.read(fd, BLOCK)
            if not block:
                break
            hasher.update(block)
            size += len(block)
        if fsync:
            os.fsync(fd)
        return size, hasher.hexdigest()
    finally:
        os.close(fd)




def safe_makedirs(root: Path, rel_dir: str) -> Path:
    """Create ``root/rel_dir`` component by component, refusing anything that is not a real dir.

    ``root`` itself must be a real directory (not a symlink). Returns the directory path.
    """
    root = Path(root)
    st = os.lstat(root)
    if not stat.S_ISDIR(st.st_mode):
        raise IntegrityError(f"{root} is not a directory (symlink or file); refusing to write there")
    current = root
    for seg in [s for s in rel_dir.split("/") if s]:
        current = current / seg
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            try:
                os.mkdir(current, DIR_MODE)
            except OSError as exc:
                raise _os_error(exc, f"creating directory {current}") from exc
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise IntegrityError(
                f"{current} exists and is not a real directory (symlink or file); refusing to write through it"
            )
    return current


def name_problem(name: str) -> Optional[str]:
    """Why ``name`` is not an acceptable member/tree path, or None when it is fine."""
    if not name:
        return "empty name"
    if "\x00" in name:
        return "NUL byte in name"
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
        if seg.startswith(RESERVED_PREFIX):
            return f"reserved name '{seg}'"
    return None


def _parents(name: str) -> Iterable[str]:
    segs = name.split("/")
    for i in range(1, len(segs)):
        yield "/".join(segs[:i])


def _member_type(f) -> Tuple[str, Optional[str]]:
    """('file'|'dir'|'bad', reason) for a py7zr ArchiveFile."""
    if f.is_symlink:
        return "bad", "symlink"
    if f.is_junction:
        return "bad", "junction / reparse point"
    if f.is_socket:
        return "bad", "socket"
    fmt = f.st_fmt
    if fmt is not None and fmt not in (stat.S_IFREG, stat.S_IFDIR):
        kinds = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo",
                 stat.S_IFLNK: "symlink", stat.S_IFSOCK: "socket"}
        return "bad", kinds.get(fmt, f"special file (mode {fmt:o})")
    if f.is_directory or fmt == stat.S_IFDIR:
        if fmt is not None and fmt != stat.S_IFDIR:
            return "bad", "directory attribute on a non-directory"
        return "dir", None
    if not f.is_file:
        return "bad", "not a regular file"
    return "file", None


def _refuse(archive_path, chunk: Chunk, problems: List[str]) -> IntegrityError:
    shown = "; ".join(problems[:MAX_LISTED])
    more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    return IntegrityError(f"unsafe or unexpected content in chunk {chunk.name} ({archive_path}): {shown}{more}")


# --------------------------------------------------------------------------------------------
# public API


def check_members(archive_path, chunk: Chunk, expected: Optional[Expected] = None) -> Dict[str, int]:
    """Refuse unsafe or unexpected members of ``archive_path`` before anything is written.

    Returns ``{member: declared uncompressed size}`` for the file members. When ``expected`` is
    given, the declared sizes must also match it. Raises IntegrityError naming chunk and member.
    """
    try:
        with py7zr.SevenZipFile(archive_path, mode="r") as sz:
            if sz.needs_password():
                raise IntegrityError(f"chunk {chunk.name} ({archive_path}) is encrypted; bundles never are")
            entries = list(sz.files)
    except IntegrityError:
        raise
    except (py7zr.exceptions.ArchiveError, py7zr.exceptions.PasswordRequired, EOFError, ValueError,
            KeyError, IndexError, TypeError, AttributeError) as exc:
        raise IntegrityError(f"chunk {chunk.name} ({archive_path}) is not a readable 7z archive: {exc}") from exc
    except OSError as exc:
        raise IntegrityError(f"cannot read chunk {chunk.name} ({archive_path}): {exc}") from exc

    wanted = set(chunk.members)
    problems: List[str] = []
    for m in sorted(wanted):
        why = name_problem(m)
        if why:
            problems.append(f"manifest lists unsafe member {m!r} ({why})")
    allowed_dirs = {p for m in wanted for p in _parents(m)}
    files: Dict[str, int] = {}
    seen = set()
    for f in entries:
        name = f.filename
        why = name_problem(name)
        if why:
            problems.append(f"member {name!r}: {why}")
            continue
        if name in seen:
            problems.append(f"member {name!r}: duplicate name")
            continue
        seen.add(name)
        kind, why = _member_type(f)
        if kind == "bad":
            problems.append(f"member {name!r}: {why} (only regular files are allowed)")
        elif kind == "dir":
            if name not in allowed_dirs:
                problems.append(f"member {name!r}: directory entry that is not a parent of any expected member")
        elif name not in wanted:
            problems.append(f"member {name!r}: not listed for this chunk in the bundle manifest")
        else:
            files[name] = int(f.uncompressed or 0)
            if expected is not None and name in expected and files[name] != expected[name][0]:
                problems.append(f"member {name!r}: declared size {files[name]} != expected {expected[name][0]}")
    for m in sorted(wanted - set(files)):
        if m not in seen:
            problems.append(f"member {m!r}: listed in the bundle manifest but missing from the chunk")
    if problems:
        raise _refuse(archive_path, chunk, problems)
    return files


def extract_chunk(archive_path, chunk: Chunk, dest_dir, expected: Expected) -> List[str]:
    """Extract ``chunk`` into ``dest_dir`` after :func:`check_members`, verifying every member.

    ``expected`` maps each member name (at least all of ``chunk.members``) to (size, sha256).
    On success the members are in place under ``dest_dir`` (existing files of the same name are
    replaced) and the list of members is returned. On failure nothing of this chunk is left in
    ``dest_dir``. Re-extracting a chunk is idempotent.
    """
    missing = [m for m in chunk.members if m not in expected]
    if missing:
        raise IntegrityError(f"bundle manifest has no size/sha256 for member(s) {missing[:MAX_LISTED]} of chunk {chunk.name}")
    exp = {m: (int(expected[m][0]), str(expected[m][1]).lower()) for m in chunk.members}
    if name_problem(chunk.name) or "/" in chunk.name:
        raise IntegrityError(f"unsafe chunk name {chunk.name!r}")
    check_members(archive_path, chunk, exp)

    dest_dir = Path(os.path.abspath(dest_dir))
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(exc, f"creating {dest_dir}") from exc
    tmp_root = safe_makedirs(dest_dir, EXTRACT_TMP)
    tmp = tmp_root / chunk.name
    remove_entry(tmp)
    try:
        os.mkdir(tmp, 0o700)
        limit = sum(size for size, _ in exp.values())
        try:
            with py7zr.SevenZipFile(archive_path, mode="r", max_extract_size=limit) as sz:
                sz.extractall(path=tmp)
        except OSError as exc:
            raise _os_error(exc, f"extracting chunk {chunk.name}") from exc
        except py7zr.exceptions.DecompressionBombError as exc:
            raise IntegrityError(f"chunk {chunk.name} expands beyond the expected {limit} bytes: {exc}") from exc
        except Exception as exc:  # py7zr raises assorted types on corrupt input
            raise IntegrityError(f"extracting chunk {chunk.name} ({archive_path}) failed: {exc}") from exc

        # Exactly the expected regular files (and their parent dirs) may have appeared.
        problems: List[str] = []
        found = set()
        for dirpath, dirnames, filenames in os.walk(tmp, followlinks=False):
            for entry in dirnames + filenames:
                full = Path(dirpath) / entry
                rel = full.relative_to(tmp).as_posix()
                st = os.lstat(full)
                if stat.S_ISDIR(st.st_mode):
                    continue
                if not stat.S_ISREG(st.st_mode):
                    problems.append(f"{rel!r} extracted as a non-regular file")
                elif rel not in exp:
                    problems.append(f"{rel!r} appeared but is not expected")
                else:
                    found.add(rel)
        for m in sorted(set(exp) - found):
            problems.append(f"member {m!r} was not extracted")
        for m in sorted(found):
            size, digest = _hash_regular(tmp / m, fsync=True)
            if size != exp[m][0]:
                problems.append(f"member {m!r}: size {size} != expected {exp[m][0]}")
            elif digest != exp[m][1]:
                problems.append(f"member {m!r}: sha256 {digest} != expected {exp[m][1]}")
        if problems:
            raise _refuse(archive_path, chunk, problems)

        # Move into place; every directory on the way is checked/created without following links.
        touched = set()
        for m in sorted(exp):
            parent_rel = m.rpartition("/")[0]
            parent = safe_makedirs(dest_dir, parent_rel)
            target = parent / m.rpartition("/")[2]
            try:
                st = os.lstat(target)
                if stat.S_ISDIR(st.st_mode):
                    raise IntegrityError(f"{target} is a directory where chunk {chunk.name} has file {m!r}")
            except FileNotFoundError:
                pass
            src = tmp / m
            os.chmod(src, FILE_MODE)  # just verified a regular file in our private dir
            os.replace(src, target)  # rename never follows a symlink at target
            touched.add(parent)
        for d in touched:
            fsync_dir(d)
        return sorted(exp)
    finally:
        try:
            remove_entry(tmp)
            os.rmdir(tmp_root)
        except OSError:
            pass  # another chunk's temp dir still there, or already gone


def split_files(files: Iterable[BundleFile]) -> List[BundleFile]:
    """The files stored as several parts (or under a member name other than their path)."""
    return [f for f in files if len(f.parts) != 1 or f.parts[0].member != f.path]


def space_needed(files: Iterable[BundleFile]) -> int:
    """Peak bytes an unpack writes into staging: the whole tree plus the largest split file
    (its parts and the reassembled file coexist until the parts are removed)."""
    files = list(files)
    return sum(f.size for f in files) + max((f.size for f in split_files(files)), default=0)


def _check_parts(bf: BundleFile) -> list:
    parts = sorted(bf.parts, key=lambda p: p.offset)
    offset = 0
    for p in parts:
        if p.offset != offset or p.size < 0:
            raise IntegrityError(f"bundle manifest: parts of {bf.path} are not contiguous at offset {offset}")
        offset += p.size
    if offset != bf.size:
        raise IntegrityError(f"bundle manifest: parts of {bf.path} add up to {offset} bytes, file has {bf.size}")
    return parts


def reassemble(dest_dir, files: List[BundleFile]) -> List[str]:
    """Join split files from their parts (in offset order, streamed), verify, remove the parts.

    Resumable: if the final file is already complete and correct, leftover parts are just
    removed; otherwise the file is rebuilt into a temporary file next to it and renamed into
    place, so a kill at any moment leaves either the parts or the correct file (or both).
    Returns the paths reassembled (or finished).
    """
    dest_dir = Path(os.path.abspath(dest_dir))
    done = []
    for bf in split_files(files):
        for name in [bf.path] + [p.member for p in bf.parts]:
            why = name_problem(name)
            if why:
                raise IntegrityError(f"bundle manifest: unsafe path {name!r} ({why})")
        parts = _check_parts(bf)
        parent = safe_makedirs(dest_dir, bf.path.rpartition("/")[0])
        final = parent / bf.path.rpartition("/")[2]
        complete = False
        try:
            st = os.lstat(final)
            if stat.S_ISREG(st.st_mode) and st.st_size == bf.size:
                complete = _hash_regular(final)[1] == bf.sha256.lower()
        except FileNotFoundError:
            pass
        if not complete:
            partial = final.with_name(final.name + "." + PARTIAL_SUFFIX)
            remove_entry(partial)
            try:
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
            except OSError as exc:
                raise _os_error(exc, f"creating {partial}") from exc
            hasher = hashlib.sha256()
            total = 0
            try:
                with os.fdopen(fd, "wb") as out:
                    for p in parts:
                        part_path = dest_dir / p.member
                        try:
                            pfd = os.open(part_path, os.O_RDONLY | os.O_NOFOLLOW)
                        except FileNotFoundError as exc:
                            raise IntegrityError(
                                f"part {p.member} of {bf.path} is missing (re-extract chunk {p.chunk})") from exc
                        except OSError as exc:
                            raise IntegrityError(f"cannot open part {p.member}: {exc}") from exc
                        with os.fdopen(pfd, "rb") as src:
                            if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
                                raise IntegrityError(f"part {p.member} is not a regular file")
                            ph = hashlib.sha256()
                            psize = 0
                            while True:
                                block = src.read(BLOCK)
                                if not block:
                                    break
                                ph.update(block)
                                hasher.update(block)
                                psize += len(block)
                                try:
                                    out.write(block)
                                except OSError as exc:
                                    raise _os_error(exc, f"reassembling {bf.path}") from exc
                        if psize != p.size or ph.hexdigest() != p.sha256.lower():
                            raise IntegrityError(
                                f"part {p.member} of {bf.path} does not match the manifest (re-extract chunk {p.chunk})")
                        total += psize
                    try:
                        out.flush()
                        os.fsync(out.fileno())
                    except OSError as exc:
                        raise _os_error(exc, f"reassembling {bf.path}") from exc
                if total != bf.size or hasher.hexdigest() != bf.sha256.lower():
                    raise IntegrityError(f"reassembled {bf.path} does not match the manifest (size {total}, "
                                         f"sha256 {hasher.hexdigest()})")
                try:
                    st = os.lstat(final)
                    if stat.S_ISDIR(st.st_mode):
                        raise IntegrityError(f"{final} is a directory, expected file {bf.path}")
                except FileNotFoundError:
                    pass
                os.replace(partial, final)
                fsync_dir(parent)
            except BaseException:
                try:
                    os.unlink(partial)
                except OSError:
                    pass
                raise
        for p in parts:
            if p.member == bf.path:
                continue
            try:
                os.unlink(dest_dir / p.member)
            except FileNotFoundError:
                pass
        fsync_dir(parent)
        done.append(bf.path)
    return done


def verify_tree(dest_dir, files: Iterable[BundleFile], check_hashes: bool = True) -> None:
    """The tree at ``dest_dir`` must hold exactly ``files`` (size and sha256), nothing else.

    Extra directories that are not a parent of any expected file count as extra entries;
    symlinks and special files are always wrong. IntegrityError lists the first few problems.
    """
    dest_dir = Path(os.path.abspath(dest_dir))
    want = {f.path: f for f in files}
    dirs = {p for path in want for p in _parents(path)}
    problems: List[str] = []
    try:
        st = os.lstat(dest_dir)
    except FileNotFoundError:
        raise IntegrityError(f"{dest_dir} does not exist")
    if not stat.S_ISDIR(st.st_mode):
        raise IntegrityError(f"{dest_dir} is not a directory")
    seen = set()
    for dirpath, dirnames, filenames in os.walk(dest_dir, followlinks=False):
        for entry in sorted(dirnames + filenames):
            full = Path(dirpath) / entry
            rel = full.relative_to(dest_dir).as_posix()
            mode = os.lstat(full).st_mode
            if stat.S_ISDIR(mode):
                if rel not in dirs:
                    problems.append(f"extra directory {rel}")
            elif not stat.S_ISREG(mode):
                problems.append(f"not a regular file: {rel}")
            elif rel not in want:
                problems.append(f"extra file {rel}")
            else:
                seen.add(rel)
                f = want[rel]
                size = os.lstat(full).st_size
                if size != f.size:
                    problems.append(f"wrong size {rel} ({size} != {f.size})")
                elif check_hashes and _hash_regular(full)[1] != f.sha256.lower():
                    problems.append(f"wrong sha256 {rel}")
    for rel in sorted(set(want) - seen):
        problems.append(f"missing {rel}")
    if problems:
        shown = "; ".join(problems[:MAX_LISTED])
        more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
        raise IntegrityError(f"{len(problems)} problem(s) in {dest_dir}: {shown}{more}")
